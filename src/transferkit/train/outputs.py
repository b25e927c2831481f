"""What a fine-tune run produced: the typed outcome of its stages, the model directory and the result.

:class:`RunOutcome` is filled by the training recipe (:mod:`transferkit.train.run`);
:func:`write_outputs` writes the model directory atomically (weights through the task side, log history,
TensorBoard events, ``training_summary.json``, curves and the HTML/Markdown report) and
:func:`build_result` turns the outcome into the :class:`TrainResult` a step returns.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import TrainingError
from transferkit.io import atomic_output_dir, write_json
from transferkit.train.checkpoints import TENSORBOARD_DIR

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
REPORT_STEM = "training_report"
CURVES_FILE = "training_curves.png"
HISTORY_FILE = "log_history.json"


@dataclass
class TrainResult:
    """What a fine-tune run produced (everything a KFP component needs for Metrics and reports).

    Attributes:
        out_dir: The model directory (written only by rank 0 under torchrun).
        written: Whether this process wrote ``out_dir``.
        strategy: Transfer strategy.
        model: Base model reference.
        labels: Label names in id order.
        best_metric_name: Validation metric used for model selection (``accuracy``, ``f1_macro``, ``loss``).
        best_metric_value: Its value for the returned model.
        validation_metrics: Validation metrics of the returned model (``accuracy``, ``f1_macro``, ``loss``...).
        train_loss: Mean training loss of this process's training call (None for off_the_shelf).
        trainable_params: Parameters updated by training.
        total_params: All parameters of the saved model.
        best_step: Optimizer step of the restored best checkpoint.
        global_step: Optimizer steps done.
        epochs_completed: Epochs done (fractional).
        stop_reason: ``epochs``, ``max_steps``, ``early_stopping`` or ``no_training``.
        wall_time_s: Wall time of the whole step.
        train_samples_per_second: Training throughput (the Trainer's definition).
        device: ``cpu``, ``cuda``...
        precision: ``fp32``, ``bf16`` or ``fp16``.
        world_size: Number of training processes.
        resumed_from: Checkpoint the run resumed from, if any.
        feature_cache: Fast-path details when the head was trained on cached features.
        warnings: Diagnostics (overfitting...) also shown in the report.
        summary_path: ``training_summary.json``.
        report_html: HTML report.
        report_md: Markdown report.
        curves_png: Loss/metric/gradient-norm curves.
        tensorboard_dir: TensorBoard event files.
        checkpoint_dir: Where checkpoints were kept (None when removed after success).
        preserve_source: Summary returned by the forgetting mitigation, if it ran.

    """

    out_dir: Path
    written: bool
    strategy: str
    model: str
    labels: list[str]
    best_metric_name: str
    best_metric_value: float | None
    validation_metrics: dict[str, float]
    train_loss: float | None
    trainable_params: int
    total_params: int
    best_step: int | None
    global_step: int
    epochs_completed: float
    stop_reason: str
    wall_time_s: float
    train_samples_per_second: float | None
    device: str
    precision: str
    world_size: int
    resumed_from: str | None = None
    feature_cache: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    summary_path: Path | None = None
    report_html: Path | None = None
    report_md: Path | None = None
    curves_png: Path | None = None
    tensorboard_dir: Path | None = None
    checkpoint_dir: Path | None = None
    preserve_source: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (paths as strings)."""
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


@dataclass
class RunOutcome:
    """What the training stages measured, for the summary, the report and the result.

    Attributes:
        trainable: Parameters updated by training.
        total: All parameters of the model.
        stop_reason: ``epochs``, ``max_steps``, ``early_stopping`` or ``no_training``.
        device: Device type the model ran on.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        world_size: Training processes.
        validation: Validation metrics of the final model.
        resolved: Resolved hyperparameters and layout (``training_summary.json``'s ``resolved``).
        train_loss: Mean training loss (None without training).
        train_metrics: The Trainer's numeric training metrics.
        best_step: Optimizer step of the restored best checkpoint.
        global_step: Optimizer steps done.
        epochs: Epochs done (fractional).
        resumed_from: Checkpoint the run resumed from.
        feature_cache: Fast-path details of a frozen base.
        log_history: The Trainer's log history.
        epoch_seconds: Wall time of each epoch.
        train_seconds: Wall time of training.
        zero_shot: Zero-shot details of an off_the_shelf embedding model.
        warnings: Diagnostics shown in the report and the summary.
        overfitting: Overfitting episodes found in the curves.
        preserve_source: Summary of the forgetting mitigation, if it ran.
        validation_before_preserve: Validation metrics before the mitigation.
        lora: Strategy lora: rank, alpha, targets, adapter parameters, merge scale.
    """

    trainable: int
    total: int
    stop_reason: str
    device: str
    precision: str
    world_size: int = 1
    validation: dict[str, float] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)
    train_loss: float | None = None
    train_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    global_step: int = 0
    epochs: float = 0.0
    resumed_from: str | None = None
    feature_cache: dict[str, Any] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    zero_shot: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    overfitting: list[Any] = field(default_factory=list)
    preserve_source: dict[str, Any] | None = None
    validation_before_preserve: dict[str, float] | None = None
    lora: dict[str, Any] | None = None


def build_result(ctx: Any, outcome: RunOutcome, *, written: bool, checkpoint_dir: Path | None,
                 **paths: Any) -> TrainResult:
    """The step's result from the run context and its outcome (``paths``: summary, report, curves...)."""
    metric = ctx.metric
    return TrainResult(
        out_dir=ctx.config.out_dir.absolute(),
        written=written,
        strategy=ctx.config.strategy,
        model=ctx.config.model,
        labels=ctx.labels,
        best_metric_name=metric,
        best_metric_value=outcome.validation.get(metric),
        validation_metrics=outcome.validation,
        train_loss=outcome.train_loss,
        trainable_params=outcome.trainable,
        total_params=outcome.total,
        best_step=outcome.best_step,
        global_step=outcome.global_step,
        epochs_completed=outcome.epochs,
        stop_reason=outcome.stop_reason,
        wall_time_s=round(time.perf_counter() - ctx.started, 3),
        train_samples_per_second=outcome.train_metrics.get("train_samples_per_second"),
        device=outcome.device,
        precision=outcome.precision,
        world_size=outcome.world_size,
        resumed_from=outcome.resumed_from,
        feature_cache=outcome.feature_cache,
        warnings=outcome.warnings,
        checkpoint_dir=checkpoint_dir,
        preserve_source=outcome.preserve_source,
        **paths,
    )


def apply_preserve_source(ctx: Any, directory: Path, outcome: RunOutcome) -> None:
    """Run the forgetting mitigation on the not-yet-published model directory and re-measure validation."""
    try:
        from transferkit.train.preserve import preserve_source
    except ImportError as exc:
        raise TrainingError(
            "--preserve-source: the forgetting mitigation (transferkit.train.preserve) is not available "
            f"in this installation ({exc})"
        ) from exc
    outcome.preserve_source = preserve_source(
        directory, base=ctx.config.model, data_dir=ctx.config.data_dir, source=None,
        min_retention=ctx.config.min_retention,
    )
    outcome.validation_before_preserve = outcome.validation
    outcome.validation = ctx.side.validation_metrics(ctx, directory)
    if outcome.lora is not None and outcome.preserve_source.get("changed"):
        # The mitigation moved merged weights layer by layer; a low-rank adapter cannot express that.
        outcome.lora = {**outcome.lora, "adapter_matches_model": False}
        logger.info("preserve-source changed the merged model: adapter/ holds the trained adapter, not the "
                    "mitigated weights (serve the merged model)")


def write_reports(directory: Path, ctx: Any, outcome: RunOutcome, curves: Any, *, tensorboard: bool
                  ) -> dict[str, Any]:
    """Write the report, curves and ``training_summary.json`` (last: they describe the final model).

    Returns:
        The artifact names recorded in the summary.
    """
    from transferkit.train.report import write_training_report

    summary = build_summary(ctx, outcome)
    md_path, html_path, png = write_training_report(directory, ctx, outcome, curves, stem=REPORT_STEM,
                                                    curves_name=CURVES_FILE)
    summary["artifacts"] = {
        "report_html": html_path.name, "report_md": md_path.name, "curves_png": png.name if png else None,
        "log_history": HISTORY_FILE if outcome.log_history else None,
        "tensorboard": TENSORBOARD_DIR if tensorboard else None,
    }
    write_json(directory / SUMMARY_FILE, summary)
    return summary["artifacts"]


def write_outputs(ctx: Any, model: Any, outcome: RunOutcome, *, checkpoint_dir: Path | None,
                  tensorboard_dir: Path | None, before_reports: Callable[[Path], None] | None = None
                  ) -> TrainResult:
    """Write the model directory of a trained model atomically and return the result (rank 0 only).

    ``before_reports`` writes strategy-specific files (the LoRA adapter) into the not-yet-published directory.
    """
    from transferkit.train.diagnostics import curves_from_history, detect_overfitting, overfitting_message

    config = ctx.config
    curves = curves_from_history(outcome.log_history)
    outcome.overfitting = detect_overfitting(curves)
    outcome.warnings = [overfitting_message(e) for e in outcome.overfitting]
    with atomic_output_dir(config.out_dir) as tmp:
        ctx.side.save(tmp, model, ctx.labels)
        if before_reports is not None:
            before_reports(tmp)
        if outcome.log_history:
            write_json(tmp / HISTORY_FILE, outcome.log_history)
        tensorboard = tensorboard_dir is not None and tensorboard_dir.is_dir()
        if tensorboard:
            shutil.copytree(tensorboard_dir, tmp / TENSORBOARD_DIR)
        if config.preserve_source:
            apply_preserve_source(ctx, tmp, outcome)
        artifacts = write_reports(tmp, ctx, outcome, curves, tensorboard=tensorboard)
    out = config.out_dir.absolute()
    kept = checkpoint_dir
    if checkpoint_dir is not None and checkpoint_dir.exists():
        keep = config.keep_checkpoints if config.keep_checkpoints is not None else config.checkpoint_dir is not None
        if not keep:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            kept = None
    logger.info("Wrote %s (%s, validation %s %.4f)", out, config.strategy, ctx.metric,
                outcome.validation.get(ctx.metric, float("nan")))
    png = artifacts["curves_png"]
    return build_result(
        ctx, outcome, written=True, checkpoint_dir=kept, summary_path=out / SUMMARY_FILE,
        report_html=out / artifacts["report_html"], report_md=out / artifacts["report_md"],
        curves_png=(out / png) if png else None,
        tensorboard_dir=(out / TENSORBOARD_DIR) if artifacts["tensorboard"] else None,
    )


def build_summary(ctx: Any, outcome: RunOutcome) -> dict[str, Any]:
    """The content of ``training_summary.json`` (without ``artifacts``)."""
    from transferkit import __version__

    config = ctx.config
    trainable, total = outcome.trainable, outcome.total
    return {
        "format_version": 1,
        "transferkit_version": __version__,
        "strategy": config.strategy,
        "model": {
            "reference": config.model, "path": str(ctx.resolved.path), "model_type": ctx.resolved.model_type,
            "embedding_model": ctx.resolved.is_embedding_model, "pooling": ctx.pooling,
        },
        "data": {
            "dir": str(config.data_dir.absolute()), "labels": ctx.labels, "sha256": ctx.digests,
            "train_examples": len(ctx.train_split.labels), "validation_examples": len(ctx.validation_split.labels),
        },
        "config": config.to_dict(),
        "resolved": outcome.resolved,
        "parameters": {"trainable": trainable, "total": total,
                       "trainable_fraction": round(trainable / total, 6) if total else 0.0},
        "lora": outcome.lora,
        "memory": peak_memory(),
        "best": {"metric": ctx.metric, "value": outcome.validation.get(ctx.metric),
                 "step": outcome.best_step},
        "validation": outcome.validation,
        "validation_before_preserve": outcome.validation_before_preserve,
        "train_loss": outcome.train_loss,
        "stop_reason": outcome.stop_reason,
        "global_step": outcome.global_step,
        "epochs_completed": outcome.epochs,
        "wall_time_s": round(time.perf_counter() - ctx.started, 3),
        "train_seconds": round(outcome.train_seconds, 3),
        "train_samples_per_second": outcome.train_metrics.get("train_samples_per_second"),
        "epoch_seconds": [round(s, 3) for s in outcome.epoch_seconds],
        "device": outcome.device,
        "precision": outcome.precision,
        "world_size": outcome.world_size,
        "resumed_from": outcome.resumed_from,
        "feature_cache": outcome.feature_cache,
        "zero_shot": outcome.zero_shot,
        "preprocessing": ctx.side.preprocessing,
        "diagnostics": {
            "overfitting": outcome.overfitting,
            "grad_norm": _grad_norm_stats(outcome.log_history),
        },
        "warnings": outcome.warnings,
        "preserve_source": outcome.preserve_source,
    }


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory (MiB)."""
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss, 1), "cuda_peak_allocated_mb": None if cuda is None else round(cuda, 1)}


def _grad_norm_stats(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    values = [float(e["grad_norm"]) for e in history if e.get("grad_norm") is not None]
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return {"steps_logged": len(values), "max": max(finite) if finite else None,
            "last": values[-1], "non_finite": len(values) - len(finite)}
