"""Preserve-source mitigation: trade a little target accuracy for much less catastrophic forgetting.

After a fine-tune, encoder weights are moved back toward the pre-trained weights, WiSE-FT style
(Wortsman et al. 2022: ``theta(a) = theta_base + a * (theta_ft - theta_base)``; ``a = 1`` is the
fine-tuned model, ``a = 0`` the base encoder), but *layer-selectively*: the layers from ``split_layer`` up
(and any final norm) get weight ``alpha``, the embeddings and the layers below keep their fine-tuned
weights; ``split_layer = 0`` is plain uniform WiSE-FT.

Why layer-selective: the source task of a sentence-embedding model reads the geometry of the top layer's
mean-pooled output, which the top layers shape most, while much of the target-task gain sits in the lower
layers. Measured on minilm-l6 / movie sentiment (full fine-tune: 85.5% test, Lee retention 0.52):
reverting only layers 3-5 half-way kept 84.7% at retention 0.78, while uniform interpolation reached 0.80
only at 83.0% (0.74 at 84.0%); reverting the bottom layers instead was worse on both axes.

Selection is automatic and uses the VALIDATION split only (the test split is never read): for every split
layer the largest ``alpha`` whose source-task retention (measured exactly like the forgetting check) is at
least ``min_retention`` is found by bisection; the candidate with the lowest validation cross-entropy wins.
Cross-entropy rather than accuracy because on ~1k validation examples accuracy differences between
candidates are within noise, and because the trainer already picked the fine-tuned checkpoint by validation
accuracy (biasing it upward); on the benchmark, validation loss ranked the candidates like test accuracy did
while validation accuracy did not. For the best candidate(s) the classification head is also re-fitted on
the interpolated encoder's frozen features (BERT-family heads: ``classifier`` by logistic regression on
pooler outputs, or ``pooler`` + ``classifier`` for a few epochs on cached first-token states), kept only
when it lowers the validation loss.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

LR_C_GRID = (0.01, 0.1, 1.0, 10.0)
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass
class _Candidate:
    split: int
    alpha: float
    retention: float
    score: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    head: str | None = None
    head_params: dict[str, Any] | None = None
    head_state: dict[str, Any] | None = None
    heads: dict[str, tuple[float, float]] | None = None  # head -> (validation loss, validation accuracy)

    def row(self) -> dict[str, Any]:
        heads = self.heads or {}
        row: dict[str, Any] = {
            "split_layer": self.split, "alpha": round(self.alpha, 4), "retention": self.retention,
            "source_score": self.score, "best_head": self.head, "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
        }
        for name in ("kept", "lr", "mlp"):
            loss, acc = heads.get(name, (None, None))
            row[f"val_loss_{name}_head"], row[f"val_accuracy_{name}_head"] = loss, acc
        return row


class _Interpolator:
    """Moves a classifier's encoder between the base and the fine-tuned weights, layer-selectively."""

    def __init__(self, classifier: Any, base_encoder: Any) -> None:
        from transferkit.evaluate.inference import pooling_layer_index, pretrained_layer_count

        self.encoder = classifier.base_model
        self.num_layers = pretrained_layer_count(classifier.config)
        ft = {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
        base = base_encoder.state_dict()
        readout = pooling_layer_index(classifier.config)

        def head_part(key: str) -> bool:
            # The pooler and transferkit's fixed mean-pooling read-out layer belong to the head
            # functionally (the task head reads them; the source-task embeddings do not), so they stay
            # as trained.
            return key.startswith("pooler.") or (readout is not None and f"layer.{readout}." in key)

        # Integer buffers (position ids) are not weights.
        weights = [k for k, v in ft.items() if v.is_floating_point() and not head_part(k)]
        self.keys = [k for k in weights if k in base and base[k].shape == ft[k].shape]
        skipped = [k for k in weights if k not in self.keys]
        if skipped:
            raise TrainingError(
                f"preserve-source: fine-tuned encoder weights {skipped[:3]} have no same-shaped base weight; "
                "the base model must have the fine-tuned model's architecture"
            )
        self.ft = {k: ft[k] for k in self.keys}
        self.base = {k: base[k].detach().to(ft[k].dtype).clone() for k in self.keys}
        self.depth = {k: self._depth(k) for k in self.keys}

    def _depth(self, key: str) -> int:
        """Layer index of a weight: -1 for embeddings, ``num_layers`` for anything after the stack."""
        match = _LAYER_INDEX.search("." + key)
        if match:
            return int(match.group(1))
        head = key.split(".", 1)[0]
        return -1 if "embed" in head or head in ("wte", "wpe") else self.num_layers

    def profile(self, alpha: float, split: int) -> list[float]:
        """Weight of the fine-tuned encoder per layer (embeddings first) for a setting."""
        return [alpha if (split == 0 or depth >= split) else 1.0 for depth in range(-1, self.num_layers)]

    def set(self, alpha: float, split: int = 0) -> None:
        """Interpolate layers ``>= split`` (everything when ``split == 0``) with weight ``alpha``."""
        import torch

        live = self.encoder.state_dict()  # tensors share storage with the parameters: update in place
        with torch.no_grad():
            for key in self.keys:
                weight = alpha if split == 0 or self.depth[key] >= split else 1.0
                torch.lerp(self.base[key], self.ft[key], weight, out=live[key])


def _split_labels(dataset: Any, split: str, labels: list[str], where: Path) -> tuple[list[str], np.ndarray]:
    names = dataset.labels
    index = {name: i for i, name in enumerate(labels)}
    ids = dataset.label_ids(split)
    unknown = sorted({names[i] for i in ids} - set(index))
    if unknown:
        raise TrainingError(f"{where}/{split}.parquet: labels {unknown} are not known to the model ({labels})")
    return dataset.texts(split), np.asarray([index[names[i]] for i in ids], dtype=int)


def _has_bert_head(classifier: Any) -> bool:
    import torch

    pooler = getattr(classifier.base_model, "pooler", None)
    return (
        isinstance(getattr(classifier, "classifier", None), torch.nn.Linear)
        and pooler is not None
        and isinstance(getattr(pooler, "dense", None), torch.nn.Linear)
    )


def _head_logits(classifier: Any, cls: Any, pooler_state: dict | None = None, cls_state: dict | None = None) -> Any:
    """BERT head on cached first-token states: classifier(tanh(pooler.dense(h)))."""
    import torch
    from torch.nn import functional as F

    pw = pooler_state or {"weight": classifier.base_model.pooler.dense.weight,
                          "bias": classifier.base_model.pooler.dense.bias}
    cw = cls_state or {"weight": classifier.classifier.weight, "bias": classifier.classifier.bias}
    with torch.no_grad():
        pooled = torch.tanh(F.linear(cls, pw["weight"], pw["bias"]))
        return F.linear(pooled, cw["weight"], cw["bias"]), pooled


def _loss_accuracy(logits: Any, y: np.ndarray) -> tuple[float, float]:
    """Validation cross-entropy and accuracy of logits."""
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        loss = float(F.cross_entropy(logits.float(), torch.as_tensor(y, dtype=torch.long)))
    return loss, float((logits.argmax(-1).numpy() == y).mean())


def _fit_lr_head(
    train_pooled: np.ndarray, y_train: np.ndarray, val_pooled: np.ndarray, y_val: np.ndarray, n_labels: int,
    seed: int,
) -> tuple[tuple[float, float], dict[str, Any], dict[str, Any]]:
    """Logistic regression on pooler outputs, C chosen by validation loss.

    Returns:
        ((validation loss, accuracy), params, classifier state).

    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    best: tuple[float, float, Any] | None = None
    for c in LR_C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit(train_pooled, y_train)
        loss = float(log_loss(y_val, model.predict_proba(val_pooled), labels=model.classes_))
        if best is None or loss < best[0]:
            best = (loss, c, model)
    assert best is not None
    _, c, model = best
    classes = [int(c) for c in model.classes_]
    if model.coef_.shape[0] == 1:
        # Binary LR models logit(p1) = w.x + b; softmax over [0, w.x + b] gives the same probabilities.
        rows = {classes[0]: (np.zeros(model.coef_.shape[1]), 0.0),
                classes[1]: (model.coef_[0], float(model.intercept_[0]))}
    else:
        rows = {c: (model.coef_[i], float(model.intercept_[i])) for i, c in enumerate(classes)}
    full_w = np.zeros((n_labels, model.coef_.shape[1]))
    full_b = np.full(n_labels, -1e4)  # labels absent from the training sample are never predicted
    for cls, (weight, bias) in rows.items():
        full_w[cls] = weight
        full_b[cls] = bias
    state = {"weight": torch.tensor(full_w, dtype=torch.float32), "bias": torch.tensor(full_b, dtype=torch.float32)}
    logits = torch.from_numpy(val_pooled).float() @ state["weight"].T + state["bias"]
    return _loss_accuracy(logits, y_val), {"C": c}, state


def _fit_mlp_head(
    classifier: Any, train_cls: Any, y_train: np.ndarray, val_cls: Any, y_val: np.ndarray, seed: int,
    epochs: int = 12, lr: float = 2e-3,
) -> tuple[tuple[float, float], dict[str, Any], dict[str, Any]]:
    """Train pooler + classifier on cached first-token states (AdamW), best epoch by validation loss."""
    import torch

    threads = torch.get_num_threads()
    # The head is tiny (hidden x hidden): intra-op threading only adds synchronisation cost here
    # (measured 40x slower with 2 threads on a busy 2-core machine).
    torch.set_num_threads(1)
    try:
        return _train_head(classifier, train_cls, y_train, val_cls, y_val, seed, epochs, lr)
    finally:
        torch.set_num_threads(threads)


def _train_head(
    classifier: Any, train_cls: Any, y_train: np.ndarray, val_cls: Any, y_val: np.ndarray, seed: int, epochs: int,
    lr: float,
) -> tuple[tuple[float, float], dict[str, Any], dict[str, Any]]:
    import copy

    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    pooler = copy.deepcopy(classifier.base_model.pooler.dense).float()
    head = copy.deepcopy(classifier.classifier).float()
    params = [*pooler.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    y_t = torch.as_tensor(y_train)
    best_fit, best_epoch, best_state = (float("inf"), 0.0), 0, None
    generator = torch.Generator().manual_seed(seed)
    batch = 256
    for epoch in range(1, epochs + 1):
        pooler.train()
        head.train()
        order = torch.randperm(len(y_t), generator=generator)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            logits = head(F.dropout(torch.tanh(pooler(train_cls[idx])), p=0.1, training=True))
            loss = F.cross_entropy(logits, y_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            fit = _loss_accuracy(head(torch.tanh(pooler(val_cls))), y_val)
        if fit[0] < best_fit[0]:
            best_fit, best_epoch = fit, epoch
            best_state = ({k: v.detach().clone() for k, v in pooler.state_dict().items()},
                          {k: v.detach().clone() for k, v in head.state_dict().items()})
    assert best_state is not None
    return best_fit, {"epochs": best_epoch, "lr": lr}, {"pooler": best_state[0], "classifier": best_state[1]}


def _replace_weights(model_dir: Path, classifier: Any) -> None:
    """Save the classifier to a temporary sibling and move its weight/config files over the originals."""
    tmp = Path(tempfile.mkdtemp(prefix=".preserve-", dir=model_dir))
    try:
        classifier.save_pretrained(tmp)
        for name in sorted(os.listdir(tmp)):
            os.replace(tmp / name, model_dir / name)
    finally:
        for leftover in tmp.glob("*"):
            leftover.unlink()
        tmp.rmdir()


def default_splits(num_layers: int) -> list[int]:
    """Split layers searched by default: every boundary for shallow models, about 6 for deep ones."""
    if num_layers <= 12:
        return list(range(num_layers))
    return sorted({0, *(round(num_layers * f) for f in (1 / 3, 1 / 2, 2 / 3, 5 / 6)), num_layers - 1})


def preserve_source(
    model_dir: Path,
    *,
    base: str | Path,
    data_dir: Path,
    source: str | None,
    min_retention: float,
    splits: list[int] | None = None,
    bisection_steps: int = 4,
    top_k: int = 1,
    max_train: int = 4096,
    refit_head: bool = True,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Modify the fine-tuned classifier in ``model_dir`` in place to keep source retention >= ``min_retention``.

    Args:
        model_dir: Fine-tuned classifier directory (rewritten in place: weights and config).
        base: The base model it was fine-tuned from (catalog name or directory).
        data_dir: Prepared dataset; the validation split selects, the train split fits re-fitted heads.
        source: Source set for retention (None = the base model's default, ``builtin:lee-similarity``).
        min_retention: Retention budget in (0, 1] (``model_score / base_score`` of the forgetting check).
        splits: Split layers to search (0 = uniform WiSE-FT); None = :func:`default_splits`.
        bisection_steps: Bisection steps on ``alpha`` per split layer (precision ``2**-steps``).
        top_k: Candidates (lowest validation loss with the kept head) that also get head re-fitting.
        max_train: Train examples (seeded sample) whose features fit re-fitted heads.
        refit_head: Try re-fitted heads (else the fine-tuned head is always kept).
        batch_size: Texts per forward pass.
        seed: Seed for sampling and head fitting.
        progress: Show progress bars.

    Returns:
        Summary: chosen ``split_layer``, ``alpha``, per-layer ``profile`` and ``head``, ``validation_accuracy``,
        ``retention``, the original model's validation accuracy and retention, ``changed`` and a
        ``candidates`` table (one row per split layer).

    Raises:
        ConfigError: Invalid ``min_retention`` or ``splits``.
        TrainingError: The model does not fit the base model or the data, or no setting reaches the budget.

    """
    import torch

    from transferkit.data.prepared import load_prepared
    from transferkit.evaluate.evaluation import model_labels, resolve_max_length
    from transferkit.evaluate.forgetting import build_probe
    from transferkit.evaluate.inference import encode, predict_proba
    from transferkit.io import write_json
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    if not 0 < min_retention <= 1:
        raise ConfigError(f"min_retention: expected a ratio in (0, 1], got {min_retention}")
    model_dir = Path(model_dir)
    resolved = resolve_model(model_dir)
    labels = model_labels(model_dir, resolved.config)
    classifier = load_sequence_classifier(resolved)
    classifier.eval()
    tokenizer = load_tokenizer(resolved)
    probe = build_probe(base, source, batch_size=16, progress=progress)
    probe.check_architecture(classifier.base_model, str(model_dir))
    interpolator = _Interpolator(classifier, probe.base_encoder)
    splits = default_splits(interpolator.num_layers) if splits is None else sorted(set(splits))
    if not splits or any(not 0 <= s < interpolator.num_layers for s in splits):
        raise ConfigError(f"splits: expected layer indices in [0, {interpolator.num_layers}), got {splits}")
    base_score = probe.measure(probe.base_encoder, desc="source (base)").score
    if base_score <= 1e-9:
        raise TrainingError(f"{probe.source.name}: base model scores {base_score:.4f}; retention is undefined")

    dataset = load_prepared(data_dir)
    val_texts, y_val = _split_labels(dataset, "validation", labels, Path(data_dir))
    train_texts, y_train = _split_labels(dataset, "train", labels, Path(data_dir))
    if not val_texts:
        raise TrainingError(f"{data_dir}/validation.parquet: empty; preserve-source selects on validation")
    if len(train_texts) > max_train:
        keep = np.sort(np.random.default_rng(seed).choice(len(train_texts), size=max_train, replace=False))
        train_texts, y_train = [train_texts[i] for i in keep], y_train[keep]
    bert_head = _has_bert_head(classifier)
    do_refit = refit_head and bert_head and len(set(y_train.tolist())) >= 2
    max_length = resolve_max_length(model_dir, tokenizer, classifier.config, None)
    measured: dict[tuple[int, float], _Candidate] = {}

    def retention_at(split: int, alpha: float) -> _Candidate:
        key = (split, round(alpha, 6))
        if key not in measured:
            interpolator.set(alpha, split)
            score = probe.measure(classifier, desc=f"source split={split} alpha={alpha:.3f}").score
            measured[key] = _Candidate(split=split, alpha=alpha, retention=score / base_score, score=score)
        return measured[key]

    def features(texts: list[str], desc: str) -> Any:
        return torch.from_numpy(encode(classifier, tokenizer, texts, pooling="cls", batch_size=batch_size,
                                       max_length=max_length, desc=desc, progress=progress))

    def with_kept_head(candidate: _Candidate) -> Any:
        interpolator.set(candidate.alpha, candidate.split)
        if bert_head:
            val_cls = features(val_texts, "validation")
            logits, _ = _head_logits(classifier, val_cls)
        else:
            probs = predict_proba(classifier, tokenizer, val_texts, batch_size=batch_size, max_length=max_length,
                                  desc="validation", progress=progress)
            val_cls, logits = None, torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0)))
        candidate.heads = {"kept": _loss_accuracy(logits, y_val)}
        (candidate.val_loss, candidate.val_accuracy), candidate.head = candidate.heads["kept"], "kept"
        candidate.head_params = {}
        return val_cls

    def refit(candidate: _Candidate, val_cls: Any) -> None:
        interpolator.set(candidate.alpha, candidate.split)
        train_cls = features(train_texts, "train features")
        _, train_pooled = _head_logits(classifier, train_cls)
        _, val_pooled = _head_logits(classifier, val_cls)
        assert candidate.heads is not None
        options: list[tuple[tuple[float, float], str, dict, dict | None]] = [
            (candidate.heads["kept"], "kept", {}, None)]
        fit, params, state = _fit_lr_head(train_pooled.numpy(), y_train, val_pooled.numpy(), y_val, len(labels),
                                          seed)
        options.append((fit, "lr", params, {"classifier": state}))
        fit, params, state = _fit_mlp_head(classifier, train_cls, y_train, val_cls, y_val, seed)
        options.append((fit, "mlp", params, state))
        candidate.heads.update({name: fit for fit, name, _, _ in options})
        # A re-fitted head must strictly lower the validation loss to replace the kept one (min keeps the first).
        best = min(options, key=lambda o: o[0][0])
        (candidate.val_loss, candidate.val_accuracy), candidate.head, candidate.head_params = best[0], best[1], best[2]
        candidate.head_state = best[3]

    original = retention_at(0, 1.0)
    with_kept_head(original)
    summary: dict[str, Any] = {
        "method": "layer-selective WiSE-FT interpolation toward the base weights (+ head re-fit)",
        "mode": probe.mode, "metric": probe.metric, "source": probe.source.name, "base": str(base),
        "min_retention": min_retention, "base_score": base_score, "max_length_source": probe.max_length,
        "original": {"validation_accuracy": original.val_accuracy, "validation_loss": original.val_loss,
                     "retention": original.retention, "source_score": original.score},
    }
    if original.retention >= min_retention:
        interpolator.set(1.0)
        summary.update(split_layer=0, alpha=1.0, profile=interpolator.profile(1.0, 0), head="kept",
                       head_params={}, validation_accuracy=original.val_accuracy, validation_loss=original.val_loss,
                       retention=original.retention,
                       source_score=original.score, changed=False, candidates=[original.row()])
        logger.info("preserve-source: retention %.3f already meets %.3f; model unchanged",
                    original.retention, min_retention)
        write_json(model_dir / "preserve_source.json", summary)
        return summary

    # Per split layer: the largest alpha meeting the budget (retention grows as alpha shrinks).
    frontier: list[_Candidate] = []
    for split in splits:
        if retention_at(split, 0.0).retention < min_retention:
            logger.info("split %d: even alpha 0 keeps only retention %.3f", split, measured[(split, 0.0)].retention)
            continue
        low, high = 0.0, 1.0
        for _ in range(bisection_steps):
            mid = (low + high) / 2
            if retention_at(split, mid).retention >= min_retention:
                low = mid
            else:
                high = mid
        frontier.append(retention_at(split, low))
    if not frontier:
        best = max(measured.values(), key=lambda c: c.retention)
        raise TrainingError(
            f"preserve-source: no setting reaches retention {min_retention} on {probe.source.name} "
            f"(best {best.retention:.3f})"
        )
    val_features = {id(c): with_kept_head(c) for c in frontier}
    for c in frontier:
        logger.info("split %d alpha %.3f: retention %.3f, validation loss %.4f, accuracy %.4f (kept head)", c.split,
                    c.alpha, c.retention, c.val_loss, c.val_accuracy)
    if do_refit:
        for c in sorted(frontier, key=lambda c: c.val_loss or 0.0)[:top_k]:
            refit(c, val_features[id(c)])
            logger.info("split %d alpha %.3f: validation (loss, accuracy) by head %s", c.split, c.alpha, c.heads)
    chosen = min(frontier, key=lambda c: (c.val_loss or 0.0, -c.retention))

    interpolator.set(chosen.alpha, chosen.split)
    if chosen.head_state is not None:
        with torch.no_grad():
            if "pooler" in chosen.head_state:
                classifier.base_model.pooler.dense.load_state_dict(chosen.head_state["pooler"])
            classifier.classifier.load_state_dict(chosen.head_state["classifier"])
    _replace_weights(model_dir, classifier)
    summary.update(
        split_layer=chosen.split, alpha=chosen.alpha, profile=interpolator.profile(chosen.alpha, chosen.split),
        head=chosen.head, head_params=chosen.head_params, validation_accuracy=chosen.val_accuracy,
        validation_loss=chosen.val_loss,
        retention=chosen.retention, source_score=chosen.score, changed=True,
        accuracy_cost_validation=(original.val_accuracy or 0.0) - (chosen.val_accuracy or 0.0),
        candidates=[c.row() for c in frontier], retention_evaluations=len(measured),
    )
    write_json(model_dir / "preserve_source.json", summary)
    logger.info(
        "preserve-source: layers >= %d at alpha %.3f with %s head: validation accuracy %.4f (was %.4f), "
        "retention %.3f (was %.3f)", chosen.split, chosen.alpha, chosen.head, chosen.val_accuracy,
        original.val_accuracy, chosen.retention, original.retention,
    )
    return summary


def load_summary(model_dir: Path) -> dict[str, Any] | None:
    """The ``preserve_source.json`` written next to a model, if any."""
    path = Path(model_dir) / "preserve_source.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def wise_ft(model_dir: Path, *, base: str | Path, alpha: float, out_dir: Path, split_layer: int = 0) -> Path:
    """Write a copy of ``model_dir`` whose encoder is interpolated toward ``base`` (head kept as trained).

    Plain WiSE-FT (``split_layer = 0``) or its layer-selective form, without head re-fitting
    (``alpha = 1``: unchanged, ``0``: base weights in the interpolated layers).

    Args:
        model_dir: Fine-tuned classifier directory.
        base: Base model it was fine-tuned from.
        alpha: Weight of the fine-tuned encoder in [0, 1].
        out_dir: Output model directory (written atomically; tokenizer and labels copied).
        split_layer: First interpolated layer (0 = all layers and the embeddings).

    Raises:
        ConfigError: ``alpha`` outside [0, 1].
        TrainingError: The base does not match the model's architecture.

    """
    import shutil

    from transferkit.io import atomic_output_dir
    from transferkit.models.loading import load_encoder, load_sequence_classifier

    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha: expected a weight in [0, 1], got {alpha}")
    model_dir = Path(model_dir)
    classifier = load_sequence_classifier(model_dir)
    _Interpolator(classifier, load_encoder(base)).set(alpha, split_layer)
    with atomic_output_dir(out_dir) as tmp:
        for item in model_dir.iterdir():
            if item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        classifier.save_pretrained(tmp)
    return Path(out_dir)
