"""Prune report (Markdown + HTML) and the size/latency/accuracy Pareto table of model variants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.reporting import Report


@dataclass
class Variant:
    """One deployable variant: its size, latency and accuracy (lower size/latency and higher accuracy win)."""

    name: str
    size_bytes: int
    latency_ms: float
    accuracy: float


def pareto_front(variants: list[Variant]) -> set[str]:
    """Names of the variants no other variant beats on size, latency and accuracy at once."""

    def dominates(a: Variant, b: Variant) -> bool:
        at_least = a.size_bytes <= b.size_bytes and a.latency_ms <= b.latency_ms and a.accuracy >= b.accuracy
        better = a.size_bytes < b.size_bytes or a.latency_ms < b.latency_ms or a.accuracy > b.accuracy
        return at_least and better

    return {v.name for v in variants if not any(dominates(o, v) for o in variants if o is not v)}


def pareto_rows(variants: list[Variant], baseline: str) -> list[list[Any]]:
    """Table rows: size, latency, speed-up and accuracy change against ``baseline``, and Pareto membership."""
    front = pareto_front(variants)
    base = next(v for v in variants if v.name == baseline)
    return [[v.name, f"{v.size_bytes / 1e6:.1f}", f"{v.latency_ms:.1f}", f"{base.latency_ms / v.latency_ms:.2f}x",
             f"{100 * v.accuracy:.2f}", f"{100 * (v.accuracy - base.accuracy):+.2f}",
             "yes" if v.name in front else ""] for v in variants]


PARETO_HEADERS = ["variant", "size (MB)", "latency (ms)", "speed-up", "accuracy (%)", "change (pt)", "Pareto front"]


def write_prune_report(directory: Path, result: Any, config: Any, variants: list[Variant] | None = None) -> Path:
    """Write ``prune_report.{md,html}`` into ``directory``; return the HTML path."""
    report = Report("Structured pruning")
    plan = result.plan
    report.paragraph(f"Model {config.model_dir} pruned to {plan['keep_layers']} encoder layers x "
                     f"{plan['keep_ffn']} feed-forward neurons ({plan['keep_heads']} heads), scored by "
                     f"squared-gradient importance on {config.importance_samples} training rows, then "
                     + ("recovered by distillation from the unpruned model (alpha "
                        f"{config.distill_alpha}, temperature {config.distill_temperature})."
                        if config.recovers else "not fine-tuned again."))
    report.heading("Shapes and validation")
    before, after = result.validation_before, result.validation_after
    report.table(["model", "encoder parameters", "all parameters", "validation accuracy", "validation loss"], [
        ["unpruned", plan["encoder_parameters_before"], result.parameters_before,
         f"{100 * before.get('accuracy', float('nan')):.2f}%", before.get("loss", float("nan"))],
        ["pruned", plan["encoder_parameters_after"], result.parameters_after,
         f"{100 * after.get('accuracy', float('nan')):.2f}%", after.get("loss", float("nan"))],
    ])
    report.paragraph(f"Kept {100 * result.kept_parameter_fraction:.1f}% of the encoder-layer parameters.")
    for note in plan.get("notes", []):
        report.paragraph(f"Note: {note}.", "note")
    if variants:
        report.heading("Size, latency and accuracy")
        report.table(PARETO_HEADERS, pareto_rows(variants, variants[0].name))
    return report.write(directory, stem="prune_report")[1]
