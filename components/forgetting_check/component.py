"""KFP component: measure catastrophic forgetting of the fine-tuned model against its base model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def forgetting_check(
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    base_model: str = "minilm-l6",
    source: str = "",
    mode: str = "",
    min_retention: float = 0.0,
    max_drop: float = -1.0,
    unseen_task_papers: int = 0,
) -> NamedTuple("ForgettingOutputs", [("passed", bool), ("retention", float)]):
    """Score the base and fine-tuned models on the source task and apply the forgetting budget.

    The gate result is returned as plain values (it never fails the task), so the pipeline can skip
    deployment and still show the report.

    Args:
        source: Source-task set (``builtin:lee-similarity``, a pairs CSV...); "" = the catalog default.
        mode: ``similarity``, ``source-task``, ``representation-drift``, ``perplexity``; "" = by base and source.
        min_retention: Smallest allowed model/base score ratio (0 = no ratio budget).
        max_drop: Largest allowed absolute drop (negative = no drop budget).
        unseen_task_papers: Generative models: also score zero-shot title generation on this many aclsum test
            abstracts, base vs fine-tuned (reported, not gated; 0 = off).

    Returns:
        Whether the budget holds, and the retention ratio.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.evaluate import ForgettingConfig, check_forgetting

    result = check_forgetting(ForgettingConfig(
        base=base_model, model=Path(model.path), out_dir=Path(report.path).parent / "forgetting",
        source=source or None, mode=mode or None, min_retention=min_retention or None,
        max_drop=None if max_drop < 0 else max_drop, progress=False, unseen_task_papers=unseen_task_papers,
    ))
    unseen = result.details.get("unseen_task")
    if unseen:
        metrics.log_metric("unseen_task_base_rougeL", float(unseen["base_rougeL"]))
        metrics.log_metric("unseen_task_model_rougeL", float(unseen["model_rougeL"]))
    for name in ("base_score", "model_score", "retention", "drop"):
        metrics.log_metric(name, float(getattr(result, name)))
    metrics.log_metric("passed", float(result.passed))
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2), encoding="utf-8")
    shutil.copyfile(result.report_html, report.path)
    return namedtuple("ForgettingOutputs", ["passed", "retention"])(bool(result.passed), float(result.retention))
