"""The pipeline's prune step: prune when asked, keep the pruned model only within the accuracy budget.

Off (``enabled=False``) the fine-tuned model passes through unchanged, so the steps after it see one model
artifact either way. On, :func:`transferkit.prune.prune_model` writes a candidate; when its validation accuracy
fell more than ``max_drop`` points below the unpruned model's, the unpruned model is passed on instead (the same
fallback policy as the export step's quantization gate) and the report says why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError
from transferkit.io import atomic_output_dir, replace_dir
from transferkit.prune.config import PruneConfig
from transferkit.reporting import Report

logger = logging.getLogger(__name__)

REPORT_FILE = "prune_report.html"


@dataclass
class PruneStepResult:
    """Outcome of the pipeline's prune step.

    Attributes:
        pruned: Whether the output is the pruned model (False: off, or the accuracy gate fell back).
        reason: One line saying which model was passed on and why.
        metrics: Scalars for the KFP Metrics artifact.
        report_html: The HTML report inside the output directory.
    """

    pruned: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    report_html: Path | None = None


def _pass_through(model_dir: Path, out_dir: Path, reason: str, extra: Report | None = None) -> Path:
    with atomic_output_dir(out_dir) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        report = extra or Report("Structured pruning")
        report.paragraph(f"Passed on the unpruned model: {reason}.")
        report.write(tmp, stem="prune_report")
    return out_dir / REPORT_FILE


def prune_step(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *, enabled: bool,
               max_drop: float = 1.0, **options: Any) -> PruneStepResult:
    """Prune (or pass through) ``model_dir`` into ``out_dir``.

    Args:
        model_dir: The fine-tuned model.
        data_dir: Its prepared dataset.
        out_dir: Where the model passed on is written (atomically).
        enabled: Prune at all.
        max_drop: Largest validation-accuracy drop in points the pruned model may have.
        **options: :class:`PruneConfig` fields (``sparsity``, ``distill_alpha``, ...).

    Raises:
        ConfigError: Bad options (checked even when pruning is off, so a typo never waits for the next run).

    """
    from transferkit.prune.step import prune_model

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not max_drop >= 0:
        raise ConfigError(f"max_drop: {max_drop!r} must be >= 0 points")
    candidate_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.prune-", dir=out_dir.parent))
    try:
        config = PruneConfig(model_dir=model_dir, data_dir=Path(data_dir), out_dir=candidate_root / "model",
                             **options)
        if not enabled:
            reason = "pruning is off (pipeline parameter prune=false)"
            return PruneStepResult(False, reason, {"pruned": 0.0}, _pass_through(model_dir, out_dir, reason))
        result = prune_model(config)
        before = result.validation_before.get("accuracy", 0.0)
        after = result.validation_after.get("accuracy", 0.0)
        drop = 100 * (before - after)
        metrics = {"kept_parameter_fraction": result.kept_parameter_fraction, "validation_accuracy_unpruned": before,
                   "validation_accuracy_pruned": after, "validation_drop_pt": drop}
        for v in result.variants:  # every variant's numbers go to the KFP Metrics
            key = v["name"].replace(" ", "_")
            metrics.update({f"{key}_size_mb": v["size_bytes"] / 1e6, f"{key}_latency_ms": v["latency_ms"],
                            f"{key}_test_accuracy": v["accuracy"], f"{key}_pareto": float(v["pareto"])})
        if drop > max_drop:
            reason = (f"the pruned model's validation accuracy {after:.2%} is {drop:.2f} pt below the unpruned "
                      f"{before:.2%} (budget {max_drop} pt)")
            logger.warning("Prune gate: %s; passing on the unpruned model", reason)
            report = Report("Structured pruning")
            report.paragraph(f"Tried: {result.plan['keep_layers']} layers x {result.plan['keep_ffn']} feed-forward "
                             f"neurons ({100 * result.kept_parameter_fraction:.1f}% of encoder parameters kept).")
            html = _pass_through(model_dir, out_dir, reason, report)
            return PruneStepResult(False, reason, {**metrics, "pruned": 0.0}, html)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(config.out_dir, out_dir)
        reason = (f"pruned model kept: validation accuracy {after:.2%} vs {before:.2%} unpruned "
                  f"(drop {drop:.2f} pt <= {max_drop} pt)")
        return PruneStepResult(True, reason, {**metrics, "pruned": 1.0}, out_dir / REPORT_FILE)
    finally:
        shutil.rmtree(candidate_root, ignore_errors=True)
