"""The fine-tune step's report: curves (loss, validation metrics, gradient norm, LR) and run facts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transferkit.reporting import Report, figure_png
from transferkit.train.diagnostics import Curves, overfitting_message

logger = logging.getLogger(__name__)


def curves_figure(curves: Curves) -> Any:
    """A 2x2 figure: train/validation loss, validation metrics, gradient norm, learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    if curves.train_steps:
        ax.plot(curves.train_steps, curves.train_loss, label="train loss", lw=1, alpha=0.8)
    if "loss" in curves.eval_metrics:
        ax.plot(curves.eval_steps, curves.eval_metrics["loss"], "o-", label="validation loss")
    ax.set_title("Loss")
    ax.set_xlabel("step")
    ax.legend(loc="best")
    ax = axes[0][1]
    for name in ("accuracy", "f1_macro"):
        if name in curves.eval_metrics:
            ax.plot(curves.eval_steps, curves.eval_metrics[name], "o-", label=f"validation {name}")
    ax.set_title("Validation metrics")
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    ax = axes[1][0]
    if curves.grad_norm_steps:
        ax.plot(curves.grad_norm_steps, curves.grad_norm, lw=1)
    ax.set_title("Gradient norm (before clipping)")
    ax.set_xlabel("step")
    ax = axes[1][1]
    if curves.lr_steps:
        ax.plot(curves.lr_steps, curves.learning_rate, lw=1)
    ax.set_title("Learning rate (top trainable layer, or head)")
    ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def write_training_report(
    directory: Path, ctx: Any, outcome: Any, curves: Curves, *, stem: str, curves_name: str
) -> tuple[Path, Path, Path | None]:
    """Write ``<stem>.html``/``.md`` and the curves PNG into ``directory``.

    Args:
        directory: Where to write.
        ctx: The run context (config, resolved model, labels, splits, pooling).
        outcome: The run's :class:`~transferkit.train.outputs.RunOutcome`.
        curves: Loss/metric/gradient-norm curves from the log history.
        stem: File name stem of the report.
        curves_name: File name of the curves PNG.

    Returns:
        (markdown path, html path, curves PNG path or None when nothing was trained).

    """
    config = ctx.config
    report = Report(f"Fine-tune: {config.model} -> {config.strategy}")
    report.heading("Run")
    validation = outcome.validation
    rows = [
        ["strategy", config.strategy],
        ["base model", f"{config.model} ({ctx.resolved.model_type}, pooling {ctx.pooling})"],
        ["labels", ", ".join(ctx.labels)],
        ["train / validation examples", f"{len(ctx.train_split.labels)} / {len(ctx.validation_split.labels)}"],
        ["trainable / total parameters", f"{outcome.trainable:,} / {outcome.total:,}"],
        ["device / precision / processes", f"{outcome.device} / {outcome.precision} / {outcome.world_size}"],
        ["stop reason", outcome.stop_reason],
        ["optimizer steps / epochs", f"{outcome.global_step} / {outcome.epochs:.2f}"],
        ["best step", outcome.best_step],
        ["train samples/s", outcome.train_metrics.get("train_samples_per_second", "n/a")],
        ["resumed from", outcome.resumed_from or "-"],
    ]
    from transferkit.train.outputs import peak_memory

    memory = peak_memory()
    peak = f"{memory['peak_rss_mb']:,.0f} MB RSS"
    if memory["cuda_peak_allocated_mb"] is not None:
        peak += f", {memory['cuda_peak_allocated_mb']:,.0f} MB CUDA allocated"
    rows.insert(5, ["peak memory (this process)", peak])
    if outcome.lora:
        lora = outcome.lora
        rows.insert(1, ["LoRA", f"rank {lora['rank']}, alpha {lora['alpha']:g}{', DoRA' if lora['dora'] else ''} on "
                                f"{lora['adapted_modules']} modules ({', '.join(lora['target_modules'])}), "
                                f"{lora['adapter_parameters']:,} adapter parameters, merged at scale "
                                f"{lora['scale']:g}"])
    report.table(["field", "value"], rows)
    report.heading("Validation metrics (selected model)")
    report.table(["metric", "value"], [[k, v] for k, v in sorted(validation.items())])
    if outcome.validation_before_preserve:
        report.paragraph("Before the forgetting mitigation (--preserve-source):")
        report.table(["metric", "value"], sorted(outcome.validation_before_preserve.items()))
    png_path = None
    if curves.train_steps or curves.eval_steps:
        report.heading("Curves")
        png = figure_png(curves_figure(curves))
        report.image(curves_name, png, "training and validation curves")
        png_path = directory / curves_name
    report.heading("Diagnostics")
    episodes = outcome.overfitting
    if episodes:
        for episode in episodes:
            report.paragraph(overfitting_message(episode), css_class="fail")
    elif curves.eval_steps:
        report.paragraph("No overfitting pattern (training loss falling while validation loss rises for 3 "
                         "evaluations) was detected.", css_class="pass")
    if curves.grad_norm:
        report.paragraph(f"Gradient norm: max {max(curves.grad_norm):.4g}, last {curves.grad_norm[-1]:.4g} "
                         f"over {len(curves.grad_norm)} logged steps.")
    if outcome.feature_cache:
        report.paragraph(f"Feature cache: {outcome.feature_cache}")
    if outcome.zero_shot:
        report.heading("Zero-shot package")
        report.table(["field", "value"], [[k, str(v)] for k, v in outcome.zero_shot.items()])
    if outcome.preserve_source:
        report.heading("Forgetting mitigation")
        report.table(["field", "value"], [[k, str(v)] for k, v in outcome.preserve_source.items()])
    resolved = outcome.resolved
    if resolved:
        report.heading("Resolved settings")
        report.table(["setting", "value"], [[k, str(v)] for k, v in resolved.items() if k != "param_groups"])
        groups = resolved.get("param_groups") or []
        if groups:
            report.heading("Optimizer parameter groups")
            report.table(["group", "depth", "lr", "weight decay", "tensors"],
                         [[g["group"], g["depth"], g["lr"], g["weight_decay"], g["tensors"]] for g in groups])
    md_path, html_path = report.write(directory, stem=stem)
    return md_path, html_path, png_path
