"""The forgetting check: how much source-task ability a fine-tuned model kept, and a gate on it.

Three modes measure the same thing from different angles, always base model vs fine-tuned model on the
same source set:

- ``similarity``: Pearson (default) and Spearman correlation between human similarity scores and the
  cosine similarity of mean-pooled encoder embeddings (sentence-embedding models such as ``minilm-l6``).
- ``source-task``: the base model's own classification head on the base encoder vs on the fine-tuned
  encoder, scored on a labelled source-task set (models that came with a head).
- ``representation-drift``: linear CKA between base and fine-tuned mean-pooled representations of probe
  texts; label-free and defined for any model (1.0 = unchanged).

``retention = model_score / base_score`` and ``drop = base_score - model_score``.

Image classifiers (``efficientnet-lite0`` or image model directories) take image source sets and support
``source-task`` (the base head transplanted onto the fine-tuned backbone) and ``representation-drift``
(per-stage CKA); see :mod:`transferkit.evaluate.forgetting_image`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, EvaluationError, ForgettingGateError, ModelError
from transferkit.evaluate.sources import SourceSet

logger = logging.getLogger(__name__)

MODES = ("similarity", "source-task", "representation-drift", "perplexity")
METRICS = {
    "similarity": ("pearson", "spearman"),
    "source-task": ("accuracy", "macro_f1"),
    "representation-drift": ("cka",),
    # Decoder bases (transferkit.evaluate.forgetting_lm): 1 / perplexity, so retention = base ppl / fine-tuned ppl.
    "perplexity": ("inverse_perplexity",),
}
MODE_FOR_KIND = {"pairs": "similarity", "labelled": "source-task", "texts": "representation-drift"}
DEFAULT_SOURCE = "builtin:lee-similarity"
MAX_LENGTH_CAP = 256


@dataclass
class ForgettingConfig:
    """Configuration of :func:`check_forgetting`.

    Attributes:
        base: The pre-trained model (catalog name or directory); text or image.
        model: The fine-tuned model directory; any model of the same architecture (a classifier or a plain
            encoder) for ``similarity`` and ``representation-drift``. Image models: an image classifier of
            the base architecture (its head may differ).
        out_dir: Output directory (forgetting.json, report.html/.md); written atomically.
        source: Source set (``builtin:NAME``, prepared dataset directory, or .csv/.tsv/.parquet/.jsonl file);
            None = the base model's catalog default (``builtin:lee-similarity`` for ``minilm-l6``,
            ``builtin:fashion-mnist`` for ``efficientnet-lite0``), else ``builtin:lee-similarity`` for text
            models (image model directories need an explicit source).
        mode: ``similarity``, ``source-task``, ``representation-drift`` or ``perplexity`` (decoder bases: the
            base LM head on the fine-tuned backbone); None = ``perplexity`` for decoder bases, else from the
            source set's kind (images: the catalog default, else ``source-task`` when the base head knows the
            source labels, else ``representation-drift``).
        metric: Score of the mode (``pearson``/``spearman``, ``accuracy``/``macro_f1``, ``cka``,
            ``inverse_perplexity``); None = first.
        max_drop: Gate: fail when ``base_score - model_score`` exceeds this.
        min_retention: Gate: fail when ``model_score / base_score`` is below this.
        max_length: Truncation length; None = the base model's limit capped at 256 tokens.
        batch_size: Texts per forward pass.
        probe_size: ``representation-drift``: at most this many probe texts (seeded sample). Images: at most
            this many images in either mode.
        seed: Seed of the probe sample.
        image_size: Images: input size of both models (None = the fine-tuned model's ``preprocessor.json`` size,
            i.e. the size it was trained and is served at).
        allow_pickle: Accept pickle weights.
        trust_remote_code: Accept models with custom code.
        progress: Show progress bars.
        unseen_task_papers: Generative models (perplexity mode): also score zero-shot title generation on this
            many aclsum test abstracts, base vs fine-tuned (:mod:`transferkit.evaluate.forgetting_unseen`;
            reported, not gated); 0 = off.

    """

    base: str
    model: Path
    out_dir: Path
    source: str | None = None
    mode: str | None = None
    metric: str | None = None
    max_drop: float | None = None
    min_retention: float | None = None
    max_length: int | None = None
    batch_size: int = 16
    probe_size: int = 1000
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    image_size: int | None = None
    unseen_task_papers: int = 0

    def __post_init__(self) -> None:
        self.base = str(self.base)
        self.model = Path(self.model)
        self.out_dir = Path(self.out_dir)
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        allowed = sorted({m for ms in METRICS.values() for m in ms}) if self.mode is None else METRICS[self.mode]
        if self.metric is not None and self.metric not in allowed:
            raise ConfigError(f"metric: expected one of {', '.join(allowed)}, got {self.metric!r}")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ConfigError(f"max_drop: expected a non-negative number, got {self.max_drop}")
        if self.min_retention is not None and not 0 < self.min_retention <= 1.5:
            raise ConfigError(f"min_retention: expected a ratio in (0, 1.5], got {self.min_retention}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length: expected at least 2 tokens, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {self.batch_size}")
        if self.probe_size < 3:
            raise ConfigError(f"probe_size: expected at least 3 texts, got {self.probe_size}")
        if self.unseen_task_papers < 0:
            raise ConfigError(f"unseen_task_papers: expected 0 (off) or a number of papers, got "
                              f"{self.unseen_task_papers}")
        if self.image_size is not None and not 8 <= self.image_size <= 1024:
            raise ConfigError(f"image_size: expected 8..1024 pixels, got {self.image_size}")


@dataclass
class ForgettingResult:
    """Outcome of the forgetting check; ``passed`` and ``retention`` are plain values for pipeline gates.

    Attributes:
        mode: Mode used.
        metric: Score name (``pearson``, ``accuracy``, ``cka``...).
        base_score: Score of the base model.
        model_score: Score of the fine-tuned model.
        retention: ``model_score / base_score``.
        drop: ``base_score - model_score``.
        passed: Whether the gate passed (True when no gate was set).
        reason: One-line explanation of the gate outcome.
        max_drop: Gate threshold used, or None.
        min_retention: Gate threshold used, or None.
        source: Source-set description.
        details: Secondary measurements (Spearman beside Pearson, per-layer CKA, truncation...).
        out_dir: Output directory.
        forgetting_path: ``forgetting.json``.
        report_html: ``report.html``.
        report_md: ``report.md``.

    """

    mode: str
    metric: str
    base_score: float
    model_score: float
    retention: float
    drop: float
    passed: bool
    reason: str
    max_drop: float | None
    min_retention: float | None
    source: str
    details: dict[str, Any]
    out_dir: Path
    forgetting_path: Path
    report_html: Path
    report_md: Path

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "mode": self.mode, "metric": self.metric, "base_score": self.base_score,
            "model_score": self.model_score, "retention": self.retention, "drop": self.drop,
            "passed": self.passed, "reason": self.reason, "max_drop": self.max_drop,
            "min_retention": self.min_retention, "source": self.source, "details": self.details,
            "out_dir": str(self.out_dir), "forgetting_path": str(self.forgetting_path),
            "report_html": str(self.report_html), "report_md": str(self.report_md),
        }

    def raise_if_failed(self) -> None:
        """Raise :class:`ForgettingGateError` with the one-line reason when the gate failed."""
        if not self.passed:
            raise ForgettingGateError(self.reason)


# ----------------------------------------------------------------------------------------------- probe


@dataclass
class Measurement:
    """One model's score on the source set plus the arrays the report draws."""

    score: float
    scores: dict[str, float]
    layers: list[np.ndarray] = field(default_factory=list)
    cosines: np.ndarray | None = None


class ForgettingProbe:
    """A source set bound to a base model's tokenizer (and head): measures any encoder of that architecture.

    Used by :func:`check_forgetting` and by the preserve-source mitigation, which measures many
    interpolated encoders against one base.

    Args:
        base: Base model reference (catalog name or directory).
        source: The loaded source set.
        mode: Mode (must suit the source kind).
        metric: Score name of the mode.
        max_length: Truncation length (None = base limit capped at 256).
        batch_size: Texts per forward pass.
        probe_size: Drift mode: maximum probe texts.
        seed: Seed of the probe sample.
        allow_pickle: Accept pickle weights.
        trust_remote_code: Accept custom code.
        progress: Show progress bars.

    """

    def __init__(
        self, base: str | Path, source: SourceSet, *, mode: str, metric: str, max_length: int | None = None,
        batch_size: int = 16, probe_size: int = 1000, seed: int = 0, allow_pickle: bool = False,
        trust_remote_code: bool = False, progress: bool = True,
    ) -> None:
        from transferkit.evaluate.inference import model_max_length, truncated_count
        from transferkit.models.catalog import resolve_model
        from transferkit.models.loading import load_encoder, load_tokenizer

        self.resolved = resolve_model(base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        self.mode, self.metric, self.source = mode, metric, source
        self.batch_size, self.progress = batch_size, progress
        self.allow_pickle, self.trust_remote_code = allow_pickle, trust_remote_code
        self.tokenizer = load_tokenizer(self.resolved, trust_remote_code=trust_remote_code)
        self.base_encoder = load_encoder(self.resolved, allow_pickle=allow_pickle,
                                         trust_remote_code=trust_remote_code)
        limit = model_max_length(self.tokenizer, self.base_encoder.config, cap=MAX_LENGTH_CAP)
        self.max_length = min(max_length, limit) if max_length else limit
        self.texts = list(source.texts)
        if mode == "representation-drift" and len(self.texts) > probe_size:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(len(self.texts), size=probe_size, replace=False))
            self.texts = [self.texts[i] for i in keep]
        self.truncated = truncated_count(self.tokenizer, self.texts, self.max_length)
        self.head_model: Any = None
        self.head_labels: list[str] = []
        self.y_true: np.ndarray | None = None
        if mode == "source-task":
            self._prepare_head()
        self._base_layers: list[np.ndarray] | None = None

    def _prepare_head(self) -> None:
        from transferkit.models.loading import load_sequence_classifier

        labels = self.resolved.head_labels
        if labels is None:
            raise EvaluationError(
                f"{self.resolved.reference}: base model has no classification head of its own, so the "
                "source-task mode cannot run; use --mode similarity or representation-drift"
            )
        unknown = sorted(set(self.source.labels) - set(labels))
        if unknown:
            raise EvaluationError(
                f"{self.source.name}: labels {unknown[:10]} are not in the base model's head ({labels[:10]})"
            )
        index = {name: i for i, name in enumerate(labels)}
        self.head_labels = labels
        self.y_true = np.asarray([index[name] for name in self.source.labels], dtype=int)
        self.head_model = load_sequence_classifier(self.resolved, allow_pickle=self.allow_pickle,
                                                   trust_remote_code=self.trust_remote_code)

    def check_architecture(self, encoder: Any, where: str) -> None:
        """Raise when ``encoder`` is not of the base model's architecture.

        In similarity mode an encoder with fewer layers than the base (a ``distill`` student, a pruned model) is
        accepted: its sentence embeddings are scored the same way. The layer-wise modes need the base's depth.
        """
        from transferkit.evaluate.inference import pretrained_layer_count

        base_cfg, cfg = self.base_encoder.config, encoder.config
        pairs = {attr: (getattr(base_cfg, attr, None), getattr(cfg, attr, None))
                 for attr in ("model_type", "hidden_size", "vocab_size")}
        layers = (pretrained_layer_count(base_cfg), pretrained_layer_count(cfg))
        if not (self.mode == "similarity" and 1 <= layers[1] <= layers[0]):
            pairs["num_hidden_layers"] = layers
        for attr, (expected, got) in pairs.items():
            if expected != got:
                raise ModelError(
                    f"{where}: {attr} {got!r} differs from the base model's {expected!r}; "
                    "the forgetting check needs the same architecture"
                )

    def _embed_layers(self, encoder: Any, desc: str) -> list[np.ndarray]:
        from transferkit.evaluate.inference import encode

        return encode(encoder, self.tokenizer, self.texts, all_layers=True, batch_size=self.batch_size,
                      max_length=self.max_length, desc=desc, progress=self.progress)

    def base_layers(self) -> list[np.ndarray]:
        """Per-layer mean-pooled embeddings of the base encoder (computed once)."""
        if self._base_layers is None:
            self._base_layers = self._embed_layers(self.base_encoder, "embed (base)")
        return self._base_layers

    def measure(self, encoder: Any, *, desc: str = "embed") -> Measurement:
        """Score an encoder (or a classifier, whose ``base_model`` is used) on the source set."""
        from scipy import stats

        from transferkit.evaluate.metrics import linear_cka

        encoder = getattr(encoder, "base_model", encoder)
        if self.mode == "source-task":
            return self._measure_head(encoder, desc)
        layers = self.base_layers() if encoder is self.base_encoder else self._embed_layers(encoder, desc)
        if self.mode == "representation-drift":
            per_layer = [linear_cka(b, m) for b, m in zip(self.base_layers(), layers, strict=True)]
            return Measurement(per_layer[-1], {"cka": per_layer[-1]}, layers=layers)
        emb = layers[-1].astype(np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        idx = np.asarray(self.source.pair_index)
        cosines = np.einsum("ij,ij->i", emb[idx[:, 0]], emb[idx[:, 1]])
        human = np.asarray(self.source.scores)
        if np.ptp(cosines) == 0:
            # A collapsed encoder maps every text to the same vector: no correlation at all.
            scores = {"pearson": 0.0, "spearman": 0.0}
        else:
            scores = {"pearson": float(stats.pearsonr(human, cosines)[0]),
                      "spearman": float(stats.spearmanr(human, cosines)[0])}
        return Measurement(scores[self.metric], scores, layers=layers, cosines=cosines)

    def _measure_head(self, encoder: Any, desc: str) -> Measurement:
        from sklearn import metrics as skm

        from transferkit.evaluate.inference import predict_proba

        head = self.head_model
        if encoder is not self.base_encoder:
            # The base head (including its pooler, trained with it) on top of the candidate encoder.
            from transferkit.evaluate.inference import pooling_layer_index

            head = copy.deepcopy(self.head_model)
            target = head.base_model.state_dict()

            def readout(key: str, config: Any) -> bool:
                index = pooling_layer_index(config)
                return index is not None and f"layer.{index}." in key

            state = {k: v for k, v in encoder.state_dict().items()
                     if not k.startswith("pooler.") and not readout(k, encoder.config)}
            missing = [k for k in target if k not in state and not k.startswith("pooler.")
                       and not readout(k, head.config)]
            misfit = [k for k, v in state.items() if k not in target or target[k].shape != v.shape]
            if missing or misfit:
                raise ModelError(f"{desc}: encoder weights do not fit the base head (e.g. {(missing + misfit)[:3]})")
            head.base_model.load_state_dict(state, strict=False)
        probs = predict_proba(head, self.tokenizer, self.texts, batch_size=self.batch_size,
                              max_length=self.max_length, desc=desc, progress=self.progress)
        pred = probs.argmax(axis=1)
        scores = {"accuracy": float(skm.accuracy_score(self.y_true, pred)),
                  "macro_f1": float(skm.f1_score(self.y_true, pred, average="macro", zero_division=0))}
        return Measurement(scores[self.metric], scores)


def build_probe(
    base: str | Path, source: str | None = None, *, mode: str | None = None, metric: str | None = None,
    **kwargs: Any,
) -> ForgettingProbe:
    """Load a source set, settle mode and metric, and bind them to the base model.

    Raises:
        EvaluationError: The mode does not suit the source set.

    """
    from transferkit.evaluate.sources import load_source
    from transferkit.models.catalog import resolve_model

    if source is None:
        resolved = resolve_model(base, allow_pickle=kwargs.get("allow_pickle", False),
                                 trust_remote_code=kwargs.get("trust_remote_code", False))
        source = (resolved.entry.forgetting_source if resolved.entry and resolved.entry.forgetting_source
                  else DEFAULT_SOURCE)
    source_set = load_source(source)
    if source_set.modality == "image":
        raise EvaluationError(
            f"{source}: an image source set ({source_set.describe()}); the text model {base} needs text: "
            "similarity pairs (text_a,text_b,score), labelled texts (text,label) or probe texts (text)"
        )
    chosen = mode or MODE_FOR_KIND[source_set.kind]
    if chosen == "similarity" and source_set.kind != "pairs":
        raise EvaluationError(f"{source}: similarity mode needs text_a,text_b,score pairs, got {source_set.kind}")
    if chosen == "source-task" and source_set.kind != "labelled":
        raise EvaluationError(f"{source}: source-task mode needs text,label rows, got {source_set.kind}")
    if metric is not None and metric not in METRICS[chosen]:
        raise ConfigError(f"metric: {metric!r} does not apply to mode {chosen}; expected {METRICS[chosen]}")
    return ForgettingProbe(base, source_set, mode=chosen, metric=metric or METRICS[chosen][0], **kwargs)


def gate(base_score: float, model_score: float, *, max_drop: float | None, min_retention: float | None,
         metric: str, source: str) -> tuple[float, float, bool, str]:
    """Return (retention, drop, passed, reason) for two scores and the thresholds."""
    if base_score <= 1e-9:
        raise EvaluationError(
            f"{source}: the base model scores {base_score:.4f} ({metric}); retention is undefined when the "
            "base has no source-task ability to lose"
        )
    retention = model_score / base_score
    drop = base_score - model_score
    what = f"{metric} {base_score:.4f} -> {model_score:.4f} on {source}"
    failures = []
    if max_drop is not None and drop > max_drop:
        failures.append(f"drop {drop:.4f} > max_drop {max_drop:g}")
    if min_retention is not None and retention < min_retention:
        failures.append(f"retention {retention:.4f} < min_retention {min_retention:g}")
    if failures:
        return retention, drop, False, f"forgetting gate failed: {'; '.join(failures)} ({what})"
    if max_drop is None and min_retention is None:
        return retention, drop, True, f"no gate set: retention {retention:.4f}, drop {drop:.4f} ({what})"
    return retention, drop, True, f"forgetting gate passed: retention {retention:.4f}, drop {drop:.4f} ({what})"


# ------------------------------------------------------------------------------------------------ step


def check_forgetting(config: ForgettingConfig) -> ForgettingResult:
    """Measure the base and the fine-tuned model on the source set, gate, and write json + report.

    The result is returned (and written) whether or not the gate passed; callers decide what a failure
    means (the CLI exits non-zero through :meth:`ForgettingResult.raise_if_failed`, a pipeline branches
    on ``passed``).

    Args:
        config: The step configuration.

    Raises:
        ModelError: A model cannot be loaded, differs in architecture from the base, or is of the other
            modality (an image model against a text base or the other way round).
        DataError: The source set is missing or malformed.
        EvaluationError: Mode and source set do not fit (including a text source set for an image model and
            the reverse), or the base scores 0 (retention undefined).
        ConfigError: An image base model directory without ``source`` (it has no catalog default).

    """
    from transferkit.evaluate.evaluation import model_modality
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_encoder

    cfg = config
    base_modality, model_modality_ = model_modality(cfg.base), model_modality(cfg.model)
    if base_modality and model_modality_ and base_modality != model_modality_:
        raise ModelError(
            f"{cfg.model}: a{'n' if model_modality_ == 'image' else ''} {model_modality_} model, but the base "
            f"{cfg.base} is a{'n' if base_modality == 'image' else ''} {base_modality} model; the forgetting "
            "check compares a fine-tuned model with its own base"
        )
    unseen_refused = ConfigError("unseen_task_papers: the unseen-task probe applies to generative models, checked "
                                 "in perplexity mode")
    if "image" in (base_modality, model_modality_):
        if cfg.unseen_task_papers:
            raise unseen_refused
        return _check_forgetting_images(cfg)
    from transferkit.evaluate.forgetting_lm import check_forgetting_lm, wants_perplexity

    if wants_perplexity(cfg):
        return check_forgetting_lm(cfg)
    if cfg.unseen_task_papers:
        raise unseen_refused
    probe = build_probe(
        cfg.base, cfg.source, mode=cfg.mode, metric=cfg.metric, max_length=cfg.max_length,
        batch_size=cfg.batch_size, probe_size=cfg.probe_size, seed=cfg.seed, allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code, progress=cfg.progress,
    )
    resolved = resolve_model(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    encoder = load_encoder(resolved, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    probe.check_architecture(encoder, str(cfg.model))

    base_m = probe.measure(probe.base_encoder, desc="base")
    model_m = probe.measure(encoder, desc="fine-tuned")
    details: dict[str, Any] = {
        "max_length": probe.max_length,
        "truncated_texts": probe.truncated,
        "n_texts": len(probe.texts),
        "n_items": probe.source.size if probe.mode != "representation-drift" else len(probe.texts),
        "source_description": probe.source.describe(),
    }
    return _finish(cfg, probe, base_m, model_m, details)


def _check_forgetting_images(cfg: ForgettingConfig) -> ForgettingResult:
    """The image branch of :func:`check_forgetting` (see :mod:`transferkit.evaluate.forgetting_image`)."""
    from transferkit.evaluate.forgetting_image import (
        IMAGE_SOURCES,
        ImageForgettingProbe,
        choose_image_mode,
        image_head_labels,
    )
    from transferkit.evaluate.sources import load_source
    from transferkit.models.catalog import resolve_model
    from transferkit.models.vision import load_image_classifier, load_image_preprocessor

    resolved = resolve_model(cfg.base, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    entry = resolved.entry
    source = cfg.source
    catalog_mode = None
    if source is None:
        if entry is None or not entry.forgetting_source:
            raise ConfigError(f"source: the image base model {cfg.base} has no default source set; pass --source "
                              f"({IMAGE_SOURCES})")
        source, catalog_mode = entry.forgetting_source, entry.forgetting_mode
    source_set = load_source(source)
    if source_set.modality != "image":
        raise EvaluationError(
            f"{source}: a text source set ({source_set.describe()}); the image model {cfg.base} needs an image "
            f"source set ({IMAGE_SOURCES})"
        )
    head_labels = image_head_labels(resolved) if cfg.mode != "representation-drift" else None
    mode = choose_image_mode(source_set, cfg.mode, head_labels, catalog_mode=catalog_mode, where=str(source))
    if cfg.metric is not None and cfg.metric not in METRICS[mode]:
        raise ConfigError(f"metric: {cfg.metric!r} does not apply to mode {mode}; expected {METRICS[mode]}")
    image_size = cfg.image_size
    if image_size is None:
        # Both models see images at the size the fine-tuned model was trained and is served at.
        image_size = load_image_preprocessor(cfg.model).config.image_size
    probe = ImageForgettingProbe(
        resolved, source_set, mode=mode, metric=cfg.metric or METRICS[mode][0], batch_size=cfg.batch_size,
        probe_size=cfg.probe_size, seed=cfg.seed, image_size=image_size, allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code, progress=cfg.progress,
    )
    model = load_image_classifier(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    probe.check_architecture(model, str(cfg.model))
    base_m = probe.measure(probe.base_model, desc="base")
    model_m = probe.measure(model, desc="fine-tuned")
    return _finish(cfg, probe, base_m, model_m, probe.details())


def _finish(cfg: ForgettingConfig, probe: Any, base_m: Measurement, model_m: Measurement,
            details: dict[str, Any]) -> ForgettingResult:
    """Gate two measurements, then write forgetting.json and the report (shared by text and images)."""
    from transferkit.evaluate.forgetting_report import write_forgetting_report
    from transferkit.evaluate.metrics import linear_cka
    from transferkit.io import atomic_output_dir, write_json

    source_name = probe.source.name
    retention, drop, passed, reason = gate(
        base_m.score, model_m.score, max_drop=cfg.max_drop, min_retention=cfg.min_retention,
        metric=probe.metric, source=source_name,
    )
    details = {
        "scores": {name: {"base": base_m.scores[name], "model": model_m.scores[name]} for name in base_m.scores},
        **details,
        "base": str(cfg.base),
        "model": str(cfg.model),
    }
    if base_m.layers and model_m.layers:
        # A shallower model (a distill student: the base's bottom layers, trained on) is compared layer by layer
        # over the layers it has.
        details["cka_per_layer"] = [linear_cka(b, m) for b, m in zip(base_m.layers, model_m.layers, strict=False)]
    log = logger.info if passed else logger.warning
    log("%s", reason)
    payload = {
        "mode": probe.mode, "metric": probe.metric, "base_score": base_m.score, "model_score": model_m.score,
        "retention": retention, "drop": drop, "passed": passed, "reason": reason,
        "max_drop": cfg.max_drop, "min_retention": cfg.min_retention, "source": source_name, "details": details,
    }
    with atomic_output_dir(cfg.out_dir) as tmp:
        write_json(tmp / "forgetting.json", payload)
        write_forgetting_report(tmp, payload, probe, base_m, model_m)
    out = cfg.out_dir
    return ForgettingResult(
        mode=probe.mode, metric=probe.metric, base_score=base_m.score, model_score=model_m.score,
        retention=retention, drop=drop, passed=passed, reason=reason, max_drop=cfg.max_drop,
        min_retention=cfg.min_retention, source=source_name, details=details, out_dir=out,
        forgetting_path=out / "forgetting.json", report_html=out / "report.html", report_md=out / "report.md",
    )
