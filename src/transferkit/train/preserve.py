"""Preserve-source mitigation: trade a little target accuracy for much less catastrophic forgetting.

After a fine-tune, the encoder weights are moved back toward the pre-trained weights (WiSE-FT, Wortsman
et al. 2022: ``theta(alpha) = theta_base + alpha * (theta_ft - theta_base)``; ``alpha = 1`` is the
fine-tuned model, ``alpha = 0`` the base encoder), and the classification head is re-fitted on the
interpolated encoder's frozen features, because the fine-tuned head was trained for ``alpha = 1``
features and loses accuracy on interpolated ones.

The interpolation weight and the head are chosen automatically: among all settings whose source-task
retention (measured exactly like the forgetting check) is at least ``min_retention``, the one with the
best accuracy on the VALIDATION split wins. The test split is never read.

Head re-fitting uses the BERT-family head layout (``pooler`` + ``classifier``) on cached first-token
hidden states: (1) the fine-tuned head kept, (2) ``classifier`` re-fitted by logistic regression on the
pooler outputs, (3) ``pooler`` and ``classifier`` trained for a few epochs on the cached states. Other
architectures get interpolation with the kept head only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

# Coarse grid first; bisection then refines the largest alpha that still meets the retention budget.
DEFAULT_ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.0)
LR_C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass
class _Candidate:
    alpha: float
    retention: float
    score: float
    val_accuracy: float | None = None
    head: str | None = None
    head_params: dict[str, Any] | None = None
    head_state: dict[str, Any] | None = None
    kept_accuracy: float | None = None
    lr_accuracy: float | None = None
    mlp_accuracy: float | None = None

    def row(self) -> dict[str, Any]:
        return {
            "alpha": round(self.alpha, 4), "retention": self.retention, "source_score": self.score,
            "val_accuracy_kept_head": self.kept_accuracy, "val_accuracy_lr_head": self.lr_accuracy,
            "val_accuracy_mlp_head": self.mlp_accuracy, "best_head": self.head,
            "val_accuracy": self.val_accuracy,
        }


class _Interpolator:
    """Moves a classifier's encoder between the base and the fine-tuned weights."""

    def __init__(self, classifier: Any, base_encoder: Any) -> None:
        from transferkit.evaluate.inference import pooling_layer_index

        self.encoder = classifier.base_model
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

    def set(self, alpha: float) -> None:
        import torch

        live = self.encoder.state_dict()  # tensors share storage with the parameters: update in place
        with torch.no_grad():
            for key in self.keys:
                torch.lerp(self.base[key], self.ft[key], alpha, out=live[key])


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


def _fit_lr_head(
    train_pooled: np.ndarray, y_train: np.ndarray, val_pooled: np.ndarray, y_val: np.ndarray, n_labels: int,
    seed: int,
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Logistic regression on pooler outputs, C chosen on validation; returns (acc, params, classifier state)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    best: tuple[float, float, Any] | None = None
    for c in LR_C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit(train_pooled, y_train)
        acc = float((model.predict(val_pooled) == y_val).mean())
        if best is None or acc > best[0]:
            best = (acc, c, model)
    assert best is not None
    acc, c, model = best
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
    return acc, {"C": c}, state


def _fit_mlp_head(
    classifier: Any, train_cls: Any, y_train: np.ndarray, val_cls: Any, y_val: np.ndarray, seed: int,
    epochs: int = 12, lr: float = 2e-3,
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Train pooler + classifier on cached first-token states (AdamW), best epoch on validation."""
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
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    import copy

    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    pooler = copy.deepcopy(classifier.base_model.pooler.dense).float()
    head = copy.deepcopy(classifier.classifier).float()
    params = [*pooler.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    y_t = torch.as_tensor(y_train)
    best_acc, best_epoch, best_state = -1.0, 0, None
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
            acc = float((head(torch.tanh(pooler(val_cls))).argmax(-1).numpy() == y_val).mean())
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = ({k: v.detach().clone() for k, v in pooler.state_dict().items()},
                          {k: v.detach().clone() for k, v in head.state_dict().items()})
    assert best_state is not None
    return best_acc, {"epochs": best_epoch, "lr": lr}, {"pooler": best_state[0], "classifier": best_state[1]}


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


def preserve_source(
    model_dir: Path,
    *,
    base: str | Path,
    data_dir: Path,
    source: str | None,
    min_retention: float,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    refine_steps: int = 3,
    top_k: int = 3,
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
        data_dir: Prepared dataset; the train split fits re-fitted heads, the validation split selects.
        source: Source set for retention (None = the base model's default, ``builtin:lee-similarity``).
        min_retention: Retention budget (``model_score / base_score`` of the forgetting check).
        alphas: Interpolation weights tried first (1 = fine-tuned, 0 = base encoder).
        refine_steps: Bisection steps between the largest feasible and the smallest infeasible alpha.
        top_k: How many of the largest feasible alphas get a (costly) validation evaluation.
        max_train: Train examples (seeded sample) whose features fit re-fitted heads.
        refit_head: Also try re-fitted heads (else WiSE-FT with the kept head only).
        batch_size: Texts per forward pass.
        seed: Seed for sampling and head fitting.
        progress: Show progress bars.

    Returns:
        Summary: chosen ``alpha`` and ``head``, ``validation_accuracy``, ``retention``, the original model's
        validation accuracy and retention, ``changed``, and a ``candidates`` table.

    Raises:
        ConfigError: ``min_retention`` is not in (0, 1].
        TrainingError: The model does not fit the base model or the data.

    """
    import torch

    from transferkit.data.prepared import load_prepared
    from transferkit.evaluate.evaluation import model_labels
    from transferkit.evaluate.forgetting import build_probe
    from transferkit.evaluate.inference import encode
    from transferkit.io import write_json
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    if not 0 < min_retention <= 1:
        raise ConfigError(f"min_retention: expected a ratio in (0, 1], got {min_retention}")
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ConfigError(f"alphas: expected values in [0, 1], got {list(alphas)}")
    model_dir = Path(model_dir)
    resolved = resolve_model(model_dir)
    labels = model_labels(model_dir, resolved.config)
    classifier = load_sequence_classifier(resolved)
    classifier.eval()
    tokenizer = load_tokenizer(resolved)
    probe = build_probe(base, source, batch_size=16, progress=progress)
    probe.check_architecture(classifier.base_model, str(model_dir))
    interpolator = _Interpolator(classifier, probe.base_encoder)
    base_score = probe.measure(probe.base_encoder, desc="source (base)").score
    if base_score <= 1e-9:
        raise TrainingError(f"{probe.source.name}: base model scores {base_score:.4f}; retention is undefined")

    dataset = load_prepared(data_dir)
    val_texts, y_val = _split_labels(dataset, "validation", labels, Path(data_dir))
    train_texts, y_train = _split_labels(dataset, "train", labels, Path(data_dir))
    if not val_texts:
        raise TrainingError(f"{data_dir}/validation.parquet: empty; preserve-source selects on validation")
    rng = np.random.default_rng(seed)
    if len(train_texts) > max_train:
        keep = np.sort(rng.choice(len(train_texts), size=max_train, replace=False))
        train_texts, y_train = [train_texts[i] for i in keep], y_train[keep]
    bert_head = _has_bert_head(classifier)
    do_refit = refit_head and bert_head and len(set(y_train.tolist())) >= 2
    from transferkit.evaluate.evaluation import resolve_max_length

    max_length = resolve_max_length(model_dir, tokenizer, classifier.config, None)

    def retention_at(alpha: float) -> _Candidate:
        interpolator.set(alpha)
        score = probe.measure(classifier, desc=f"source alpha={alpha:.3f}").score
        return _Candidate(alpha=alpha, retention=score / base_score, score=score)

    def evaluate(candidate: _Candidate) -> None:
        interpolator.set(candidate.alpha)
        options: list[tuple[float, str, dict, dict | None]] = []
        if bert_head:
            val_cls = torch.from_numpy(encode(classifier, tokenizer, val_texts, pooling="cls", batch_size=batch_size,
                                              max_length=max_length, desc="validation", progress=progress))
            logits, _ = _head_logits(classifier, val_cls)
            candidate.kept_accuracy = float((logits.argmax(-1).numpy() == y_val).mean())
        else:
            from transferkit.evaluate.inference import predict_proba

            probs = predict_proba(classifier, tokenizer, val_texts, batch_size=batch_size, max_length=max_length,
                                  desc="validation", progress=progress)
            candidate.kept_accuracy = float((probs.argmax(1) == y_val).mean())
        options.append((candidate.kept_accuracy, "kept", {}, None))
        if do_refit and candidate.alpha < 1.0:
            train_cls = torch.from_numpy(encode(classifier, tokenizer, train_texts, pooling="cls",
                                                batch_size=batch_size, max_length=max_length, desc="train features",
                                                progress=progress))
            _, train_pooled = _head_logits(classifier, train_cls)
            _, val_pooled = _head_logits(classifier, val_cls)
            acc, params, state = _fit_lr_head(train_pooled.numpy(), y_train, val_pooled.numpy(), y_val,
                                              len(labels), seed)
            candidate.lr_accuracy = acc
            options.append((acc, "lr", params, {"classifier": state}))
            acc, params, state = _fit_mlp_head(classifier, train_cls, y_train, val_cls, y_val, seed)
            candidate.mlp_accuracy = acc
            options.append((acc, "mlp", params, state))
        # Highest validation accuracy; on ties prefer the simplest head (kept < lr < mlp by list order).
        best = max(options, key=lambda o: o[0])
        candidate.val_accuracy, candidate.head, candidate.head_params, candidate.head_state = best
        logger.info("alpha %.3f: retention %.3f, validation accuracy kept %.4f / lr %s / mlp %s", candidate.alpha,
                    candidate.retention, candidate.kept_accuracy, candidate.lr_accuracy, candidate.mlp_accuracy)

    candidates = {a: retention_at(float(a)) for a in sorted(set(alphas), reverse=True)}
    original = candidates.get(1.0) or retention_at(1.0)
    candidates[1.0] = original
    evaluate(original)
    summary: dict[str, Any] = {
        "method": "wise-ft interpolation + head re-fit", "mode": probe.mode, "metric": probe.metric,
        "source": probe.source.name, "base": str(base), "min_retention": min_retention,
        "base_score": base_score, "max_length_source": probe.max_length,
        "original": {"validation_accuracy": original.val_accuracy, "retention": original.retention,
                     "source_score": original.score},
    }
    if original.retention >= min_retention:
        interpolator.set(1.0)
        summary.update(alpha=1.0, head="kept", head_params={}, validation_accuracy=original.val_accuracy,
                       retention=original.retention, source_score=original.score, changed=False,
                       candidates=[original.row()])
        logger.info("preserve-source: retention %.3f already meets %.3f; model unchanged",
                    original.retention, min_retention)
        write_json(model_dir / "preserve_source.json", summary)
        return summary

    for _ in range(refine_steps):
        feasible = [a for a, c in candidates.items() if c.retention >= min_retention]
        infeasible = [a for a, c in candidates.items() if c.retention < min_retention]
        if not feasible:
            break
        low = max(feasible)
        above = [a for a in infeasible if a > low]
        if not above:
            break
        mid = (low + min(above)) / 2
        if min(above) - low < 0.02:
            break
        candidates[mid] = retention_at(mid)
    feasible = sorted((c for c in candidates.values() if c.retention >= min_retention), key=lambda c: -c.alpha)
    if not feasible:
        raise TrainingError(
            f"preserve-source: no interpolation weight reaches retention {min_retention} on {probe.source.name} "
            f"(best {max(c.retention for c in candidates.values()):.3f})"
        )
    for candidate in feasible[:top_k]:
        evaluate(candidate)
    evaluated = [c for c in feasible if c.val_accuracy is not None]
    chosen = max(evaluated, key=lambda c: (c.val_accuracy, c.retention))

    interpolator.set(chosen.alpha)
    if chosen.head_state is not None:
        with torch.no_grad():
            if "pooler" in chosen.head_state:
                classifier.base_model.pooler.dense.load_state_dict(chosen.head_state["pooler"])
            classifier.classifier.load_state_dict(chosen.head_state["classifier"])
    _replace_weights(model_dir, classifier)
    summary.update(
        alpha=chosen.alpha, head=chosen.head, head_params=chosen.head_params,
        validation_accuracy=chosen.val_accuracy, retention=chosen.retention, source_score=chosen.score,
        changed=True, accuracy_cost_validation=(original.val_accuracy or 0.0) - (chosen.val_accuracy or 0.0),
        candidates=[c.row() for c in sorted(candidates.values(), key=lambda c: -c.alpha)],
    )
    write_json(model_dir / "preserve_source.json", summary)
    logger.info(
        "preserve-source: alpha %.3f with %s head, validation accuracy %.4f (was %.4f), retention %.3f (was %.3f)",
        chosen.alpha, chosen.head, chosen.val_accuracy, original.val_accuracy, chosen.retention, original.retention,
    )
    if not math.isfinite(chosen.retention):
        raise TrainingError("preserve-source: retention is not finite")
    return summary


def load_summary(model_dir: Path) -> dict[str, Any] | None:
    """The ``preserve_source.json`` written next to a model, if any."""
    path = Path(model_dir) / "preserve_source.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def wise_ft(model_dir: Path, *, base: str | Path, alpha: float, out_dir: Path) -> Path:
    """Write a copy of ``model_dir`` whose encoder is interpolated toward ``base`` (head kept as trained).

    The plain WiSE-FT baseline without head re-fitting (``alpha = 1``: unchanged, ``0``: base encoder).

    Args:
        model_dir: Fine-tuned classifier directory.
        base: Base model it was fine-tuned from.
        alpha: Weight of the fine-tuned encoder in [0, 1].
        out_dir: Output model directory (written atomically; tokenizer and labels copied).

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
    _Interpolator(classifier, load_encoder(base)).set(alpha)
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
