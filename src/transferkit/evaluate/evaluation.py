"""The evaluate step: metrics of a fine-tuned classifier on the test split, with slices, baseline and report.

Every task goes through the same metrics, gate, ``metrics.json``, ``predictions.parquet`` and report; the
dataset's task (:mod:`transferkit.tasks`) supplies the rows and the prediction
(:mod:`transferkit.evaluate.inputs`), e.g. the image report's contact sheet of the most confident mistakes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.long_text import check_long_document_options, read_text_inputs
from transferkit.errors import ConfigError, EvaluationError, GateFailedError, PreparedDataError
from transferkit.evaluate.metrics import (
    LOWER_IS_BETTER,
    SCALAR_METRICS,
    SLICE_METRICS,
    ClassificationMetrics,
    classification_metrics,
    slice_metrics,
)

logger = logging.getLogger(__name__)

_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")
# Logit scale for zero-shot baselines (cosine / 0.05), the usual sentence-transformers temperature.
ZERO_SHOT_SCALE = 20.0


@dataclass
class EvaluateConfig:
    """Configuration of :func:`evaluate_model`.

    Attributes:
        model_dir: Fine-tuned classifier directory (safetensors, config with id2label and/or labels.json).
            Image classifiers (``preprocessor.json`` next to the weights) are evaluated on image data.
        data_dir: Prepared dataset directory (the contract of :mod:`transferkit.data.prepared`); its task
            (text or image classification) must match the model.
        out_dir: Output directory (metrics.json, report.html/.md, predictions.parquet); written atomically.
        baseline: Optional baseline model (directory or catalog name). A classifier is evaluated the same
            way; a text model without a head (e.g. ``minilm-l6`` off the shelf) is evaluated zero-shot by
            cosine similarity between text and label-name embeddings. Image data needs an image
            classifier with label names as baseline (there is no zero-shot image baseline).
        split: Split to evaluate (``test`` unless you know why).
        primary_metric: Metric reported as ``primary`` and used by gates.
        batch_size: Examples per forward pass.
        max_length: Truncation length; None = the training max length from ``training_summary.json``
            when present, else the model limit capped at 256 tokens. Ignored for images (the model's
            ``preprocessor.json`` sets the input size).
        calibration_bins: Equal-width bins of the reliability diagram and ECE.
        slice_min_size: Slices smaller than this are shown but left out of the largest gap.
        top_mistakes: Number of most confident mistakes listed in the report (for images also shown as a
            contact sheet of thumbnails).
        min_primary: Optional gate: ``passed`` is False when the primary metric is below this (above it for
            metrics where lower is better: ece, loss).
        allow_pickle: Accept pickle weights.
        trust_remote_code: Accept models with custom code.
        progress: Show progress bars.

    """

    model_dir: Path
    data_dir: Path
    out_dir: Path
    baseline: str | None = None
    split: str = "test"
    primary_metric: str = "accuracy"
    batch_size: int = 32
    max_length: int | None = None
    calibration_bins: int = 15
    slice_min_size: int = 5
    top_mistakes: int = 10
    min_primary: float | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        self.data_dir = Path(self.data_dir)
        self.out_dir = Path(self.out_dir)
        if self.baseline is not None:
            self.baseline = str(self.baseline)
        if self.split not in ("train", "validation", "test"):
            raise ConfigError(f"split: expected train, validation or test, got {self.split!r}")
        from transferkit.evaluate.generation import GENERATION_METRICS

        if self.primary_metric not in (*SCALAR_METRICS, *GENERATION_METRICS):
            raise ConfigError(f"primary_metric: expected one of {', '.join(SCALAR_METRICS)} (classification) or "
                              f"{', '.join(GENERATION_METRICS)} (generation), got {self.primary_metric!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {self.batch_size}")
        if self.min_primary is not None:
            # Every scalar metric but the loss is a fraction: a threshold outside [0, 1] can never (or always) pass.
            low, high = (0.0, float("inf")) if self.primary_metric == "loss" else (0.0, 1.0)
            if not low <= float(self.min_primary) <= high:
                raise ConfigError(f"min_primary: {self.min_primary} is outside the range of {self.primary_metric} "
                                  f"([{low:g}, {high:g}]); the gate could never pass")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length: expected at least 2 tokens, got {self.max_length}")
        if not 2 <= self.calibration_bins <= 100:
            raise ConfigError(f"calibration_bins: expected 2..100, got {self.calibration_bins}")
        if self.slice_min_size < 1:
            raise ConfigError(f"slice_min_size: expected >= 1, got {self.slice_min_size}")
        if self.top_mistakes < 0:
            raise ConfigError(f"top_mistakes: expected >= 0, got {self.top_mistakes}")


@dataclass
class EvaluateResult:
    """What the evaluate step produced; carries everything a KFP component logs.

    Attributes:
        primary_metric: Name of the primary metric.
        primary: Its value (the gate value).
        passed: False only when ``min_primary`` was set and not met.
        reason: One-line gate outcome.
        scalars: Scalar metrics (for KFP ``Metrics``).
        labels: Class names, index = id (``ClassificationMetrics`` categories).
        confusion_matrix: Counts, rows = true, columns = predicted.
        roc: Binary tasks: ``{"fpr", "tpr", "thresholds"}`` lists for ``log_roc_curve``; else None.
        per_class: Precision/recall/F1/support per class.
        slices: Slice metrics and largest gap when the data has a group column, else None.
        baseline: ``{"model", "mode", "scalars", "deltas"}`` when a baseline was evaluated, else None.
        n_examples: Evaluated examples.
        out_dir: Output directory.
        metrics_path: ``metrics.json``.
        report_html: ``report.html`` (self-contained).
        report_md: ``report.md``.
        predictions_path: ``predictions.parquet`` (text, label, predicted, confidence; for images ``row``
            instead of ``text``).
        extra: ``max_length`` (text) or ``image_size`` (images), and ``modality``.

    """

    primary_metric: str
    primary: float
    passed: bool
    reason: str
    scalars: dict[str, float]
    labels: list[str]
    confusion_matrix: list[list[int]]
    roc: dict[str, list[float]] | None
    per_class: list[dict[str, Any]]
    slices: dict[str, Any] | None
    baseline: dict[str, Any] | None
    n_examples: int
    out_dir: Path
    metrics_path: Path
    report_html: Path
    report_md: Path
    predictions_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "primary_metric": self.primary_metric, "primary": self.primary, "passed": self.passed,
            "reason": self.reason, "scalars": self.scalars,
            "labels": self.labels, "confusion_matrix": self.confusion_matrix, "roc": self.roc,
            "per_class": self.per_class, "slices": self.slices, "baseline": self.baseline,
            "n_examples": self.n_examples, "out_dir": str(self.out_dir), "metrics_path": str(self.metrics_path),
            "report_html": str(self.report_html), "report_md": str(self.report_md),
            "predictions_path": str(self.predictions_path), **self.extra,
        }

    def raise_if_failed(self) -> None:
        """Raise :class:`GateFailedError` with the one-line reason when the primary-metric gate failed."""
        if not self.passed:
            raise GateFailedError(self.reason)


# --------------------------------------------------------------------------------------------- models


def model_labels(model_dir: Path, config: dict[str, Any]) -> list[str]:
    """Label names of a classifier directory (``labels.json`` first, then a non-generic ``id2label``).

    Raises:
        EvaluationError: The model has no classification head or no label names.

    """
    archs = config.get("architectures") or []
    if not any(str(a).endswith("Classification") for a in archs):
        raise EvaluationError(
            f"{model_dir}: model has no classification head (architectures {archs}); "
            "evaluate needs a classifier trained by `transferkit train`"
        )
    id2label = config.get("id2label") or {}
    from_config = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))] if id2label else []
    labels_file = model_dir / "labels.json"
    if labels_file.is_file():
        try:
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{labels_file}: not valid JSON ({exc})") from exc
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise EvaluationError(f"{labels_file}: expected a JSON list of label names")
        if from_config and len(from_config) != len(labels):
            raise EvaluationError(
                f"{labels_file}: {len(labels)} labels but config.json id2label has {len(from_config)}"
            )
        return labels
    if not from_config or all(_GENERIC_LABEL.match(x) for x in from_config):
        raise EvaluationError(
            f"{model_dir}: model has no label names (no labels.json, and config.json id2label is "
            "missing or only generic LABEL_N)"
        )
    return from_config


def resolve_max_length(model_dir: Path | None, tokenizer: Any, config: Any, requested: int | None) -> int:
    """The truncation length: requested, else the training length, else the model limit capped at 256."""
    from transferkit.evaluate.inference import model_max_length

    limit = model_max_length(tokenizer, config, cap=1_000_000)
    if requested is not None:
        return min(requested, limit)
    if model_dir is not None:
        summary = model_dir / "training_summary.json"
        if summary.is_file():
            try:
                data = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            # transferkit train records the length it used under "resolved" (the config may say None).
            for holder in (data.get("resolved") or {}, data, data.get("config") or {}):
                value = holder.get("max_length") if isinstance(holder, dict) else None
                if isinstance(value, int) and value > 1:
                    return min(value, limit)
    return model_max_length(tokenizer, config)


def _zero_shot_proba(
    encoder: Any, tokenizer: Any, texts: list[str], labels: list[str], *, batch_size: int, max_length: int,
    progress: bool,
) -> np.ndarray:
    """Off-the-shelf classification by an embedding model: softmax over text/label-name cosines."""
    from transferkit.evaluate.inference import encode

    label_texts = [re.sub(r"[_-]+", " ", name) for name in labels]
    text_emb = encode(encoder, tokenizer, texts, batch_size=batch_size, max_length=max_length,
                      desc="baseline (zero-shot)", progress=progress)
    label_emb = encode(encoder, tokenizer, label_texts, batch_size=batch_size, max_length=max_length,
                       progress=False)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True).clip(min=1e-12)
    label_emb /= np.linalg.norm(label_emb, axis=1, keepdims=True).clip(min=1e-12)
    logits = ZERO_SHOT_SCALE * text_emb.astype(np.float64) @ label_emb.T.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def _align_labels(
    data_labels: list[str], y_data: list[int], model_labels_: list[str], where: str, model_ref: str
) -> np.ndarray:
    """Map dataset label ids to the model's label ids by name."""
    if any(i < 0 or i >= len(data_labels) for i in y_data):
        bad = next(i for i in y_data if i < 0 or i >= len(data_labels))
        raise PreparedDataError(f"{where}: label id {bad} is outside labels.json (0..{len(data_labels) - 1})")
    index = {name: i for i, name in enumerate(model_labels_)}
    used = sorted({data_labels[i] for i in y_data})
    unknown = [name for name in used if name not in index]
    if unknown:
        raise EvaluationError(
            f"{where}: labels {unknown} are not known to the model {model_ref} "
            f"(model labels: {model_labels_})"
        )
    return np.asarray([index[data_labels[i]] for i in y_data], dtype=int)


def _predict_with(
    ref: str | Path, texts: list[str], pairs: list[str] | None, data_labels: list[str], y_data: list[int],
    where: str, cfg: EvaluateConfig, *, require_head: bool,
) -> tuple[np.ndarray, np.ndarray, list[str], str, dict[str, Any]]:
    """Load a model, align labels and return (y_true, probs, model_labels, mode, inputs).

    ``inputs``: ``max_length`` and, for a model trained by transferkit, ``text_inputs`` (truncation or chunking).
    """
    from transferkit.evaluate.inference import predict_proba
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_encoder, load_sequence_classifier, load_tokenizer

    resolved = resolve_model(ref, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    model_dir = resolved.path
    has_head = any(str(a).endswith("Classification") for a in resolved.config.get("architectures") or [])
    tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.trust_remote_code)
    if not has_head and not require_head:
        if pairs is not None:
            raise EvaluationError(f"{ref}: zero-shot baseline does not support text-pair data")
        encoder = load_encoder(resolved, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
        max_length = resolve_max_length(None, tokenizer, encoder.config, cfg.max_length)
        y_true = _align_labels(data_labels, y_data, data_labels, where, str(ref))
        probs = _zero_shot_proba(encoder, tokenizer, texts, data_labels, batch_size=cfg.batch_size,
                                 max_length=max_length, progress=cfg.progress)
        return y_true, probs, list(data_labels), "zero-shot", {"max_length": max_length}
    labels = model_labels(model_dir, resolved.config)
    y_true = _align_labels(data_labels, y_data, labels, where, str(ref))
    model = load_sequence_classifier(resolved, allow_pickle=cfg.allow_pickle,
                                     trust_remote_code=cfg.trust_remote_code)
    if int(model.config.num_labels) != len(labels):
        raise EvaluationError(f"{model_dir}: head has {model.config.num_labels} outputs but {len(labels)} labels")
    max_length = resolve_max_length(model_dir, tokenizer, model.config, cfg.max_length)
    spec = read_text_inputs(model_dir)
    if spec is not None:
        spec = dataclasses.replace(spec, max_length=max_length).check()
        check_long_document_options(spec, pairs=pairs is not None, where=where)
    probs = predict_proba(model, tokenizer, texts, pairs, batch_size=cfg.batch_size, max_length=max_length,
                          desc=f"evaluate {Path(str(ref)).name}", progress=cfg.progress, text_inputs=spec)
    inputs: dict[str, Any] = {"max_length": max_length}
    if spec is not None:
        inputs["text_inputs"] = spec.to_dict()
    return y_true, probs, labels, "classifier", inputs


def model_modality(ref: str | Path) -> str | None:
    """``image`` or ``text`` for a catalog name or model directory; None when nothing is there to tell."""
    from transferkit.tasks import model_task

    task = model_task(ref)
    return None if task is None else task.modality


def _check_task(model_ref: str | Path, dataset: Any, data_dir: Path, role: str = "model") -> None:
    """Raise a one-line error when a model and a prepared dataset belong to different tasks."""
    from transferkit.tasks import get_task, model_task

    model_t = model_task(model_ref)
    if model_t is None:
        return  # missing or odd model reference: resolving it gives the precise error
    data_t = get_task(dataset)
    if model_t is not data_t:
        hint = data_t.wrong_model_hint or f"evaluate it on data prepared with --task {model_t.name}"
        raise EvaluationError(f"{data_dir / 'schema.json'}: task {dataset.task!r}, but the {role} {model_ref} is "
                              f"{model_t.model_noun}; {hint}")


def _gate(metric: str, value: float, threshold: float | None, where: str) -> tuple[bool, str]:
    if threshold is None:
        return True, f"no gate set: {metric} {value:.4f} on {where}"
    lower = metric in LOWER_IS_BETTER
    ok = value <= threshold if lower else value >= threshold
    relation = ("<=" if ok else ">") if lower else (">=" if ok else "<")
    verdict = "passed" if ok else "failed"
    return ok, f"evaluation gate {verdict}: {metric} {value:.4f} {relation} {threshold:g} on {where}"


# ------------------------------------------------------------------------------------------------ step


def evaluate_model(config: EvaluateConfig) -> EvaluateResult:
    """Evaluate a classifier on a prepared split and write metrics.json, predictions and the report.

    Args:
        config: The step configuration.

    Returns:
        The metrics and output paths (see :class:`EvaluateResult`).

    Raises:
        PreparedDataError: The data directory is not a usable prepared dataset.
        ModelError: The model cannot be loaded.
        EvaluationError: The model has no labels, the split has labels the model does not know, or model and
            data are of different modalities (an image model on text data or the other way round).
        DataError: An image of the split cannot be decoded (the message names the row).

    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transferkit.data.prepared import load_prepared
    from transferkit.evaluate.report import write_evaluation_report
    from transferkit.io import atomic_output_dir, write_json
    from transferkit.tasks import get_task

    cfg = config
    dataset = load_prepared(cfg.data_dir)
    task = get_task(dataset)
    own = task.evaluate(cfg, dataset)
    if own is not None:
        return own
    if cfg.primary_metric not in SCALAR_METRICS:
        raise EvaluationError(f"primary_metric: {cfg.primary_metric!r} does not apply to task {task.name}; expected "
                              f"one of {', '.join(SCALAR_METRICS)}")
    where = str(cfg.data_dir / f"{cfg.split}.parquet")
    _check_task(cfg.model_dir, dataset, cfg.data_dir)
    if cfg.baseline is not None:
        _check_task(cfg.baseline, dataset, cfg.data_dir, role="baseline")
    groups = dataset.groups(cfg.split)
    rows = task.evaluation_inputs(dataset, cfg.split, cfg)
    prediction = rows.predict(cfg.model_dir, cfg)
    y_true, probs, labels = prediction.y_true, prediction.probs, prediction.labels
    n_examples = rows.n_examples
    positive = 1
    computed = classification_metrics(y_true, probs, labels, n_bins=cfg.calibration_bins, positive_index=positive)
    if cfg.primary_metric not in computed.scalars:
        raise EvaluationError(
            f"primary_metric {cfg.primary_metric!r} is undefined on {where} "
            "(ROC/PR-AUC need every class present in the split)"
        )
    y_pred = probs.argmax(axis=1)
    slices = None
    if groups is not None:
        gap_metric = cfg.primary_metric if cfg.primary_metric in SLICE_METRICS else "accuracy"
        slices = slice_metrics(y_true, y_pred, groups, gap_metric=gap_metric, min_size=cfg.slice_min_size)

    baseline_info = None
    baseline_metrics: ClassificationMetrics | None = None
    if cfg.baseline is not None:
        base = rows.predict(cfg.baseline, cfg, role="baseline")
        baseline_metrics = classification_metrics(base.y_true, base.probs, base.labels, n_bins=cfg.calibration_bins)
        deltas = {
            k: computed.scalars[k] - v for k, v in baseline_metrics.scalars.items() if k in computed.scalars
        }
        baseline_info = {"model": cfg.baseline, "mode": base.mode, "scalars": baseline_metrics.scalars,
                         "deltas": deltas}

    primary = float(computed.scalars[cfg.primary_metric])
    passed, reason = _gate(cfg.primary_metric, primary, cfg.min_primary, where)
    confidence = probs.max(axis=1)
    mistakes_idx = [int(i) for i in np.argsort(-confidence, kind="stable") if y_pred[i] != y_true[i]]
    mistakes: list[dict[str, Any]] = []
    for i in mistakes_idx[: cfg.top_mistakes]:
        mistake: dict[str, Any] = {"row": i, "true": labels[y_true[i]], "predicted": labels[y_pred[i]],
                                   "confidence": float(confidence[i])}
        mistake.update(rows.mistake_fields(i))
        mistakes.append(mistake)
    modality = task.modality
    inputs = prediction.inputs
    payload: dict[str, Any] = {
        **computed.scalars,
        "primary": primary,
        "primary_metric": cfg.primary_metric,
        "passed": passed,
        "reason": reason,
        "min_primary": cfg.min_primary,
        "higher_is_better": cfg.primary_metric not in LOWER_IS_BETTER,
        "n_examples": n_examples,
        "split": cfg.split,
        "model": str(cfg.model_dir),
        "data": str(cfg.data_dir),
        "modality": modality,
        **inputs,
        "labels": labels,
        "per_class": computed.per_class,
        "confusion_matrix": computed.confusion_matrix,
        "roc": computed.roc,
        "calibration": computed.calibration.to_dict(),
        "slices": slices,
        "baseline": baseline_info,
        "most_confident_mistakes": mistakes,
    }
    logger.info("%s on %s (%d examples): accuracy %.4f, macro F1 %.4f", cfg.model_dir, where, n_examples,
                computed.scalars["accuracy"], computed.scalars["macro_f1"])

    thumbnails = rows.thumbnails(mistakes)
    with atomic_output_dir(cfg.out_dir) as tmp:
        write_json(tmp / "metrics.json", payload)
        table = {
            **rows.row_columns(),
            "label": pa.array([labels[i] for i in y_true], pa.string()),
            "predicted": pa.array([labels[i] for i in y_pred], pa.string()),
            "confidence": pa.array(confidence, pa.float64()),
        }
        if groups is not None:
            table["group"] = pa.array([None if g is None else str(g) for g in groups], pa.string())
        pq.write_table(pa.table(table), tmp / "predictions.parquet")
        write_evaluation_report(tmp, cfg, computed, slices, baseline_metrics, baseline_info, mistakes,
                                n_examples=n_examples, max_length=inputs.get("max_length"),
                                text_inputs=inputs.get("text_inputs"),
                                image_size=inputs.get("image_size"),
                                thumbnails=thumbnails)
    out = cfg.out_dir
    return EvaluateResult(
        primary_metric=cfg.primary_metric, primary=primary, passed=passed, reason=reason,
        scalars=dict(computed.scalars), labels=labels,
        confusion_matrix=computed.confusion_matrix, roc=computed.roc, per_class=computed.per_class, slices=slices,
        baseline=baseline_info, n_examples=n_examples, out_dir=out, metrics_path=out / "metrics.json",
        report_html=out / "report.html", report_md=out / "report.md",
        predictions_path=out / "predictions.parquet", extra={**inputs, "modality": modality},
    )
