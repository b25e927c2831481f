"""KFP component: structured pruning + distillation of the selected model, behind a validation-accuracy budget."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def prune_model(
    model: Input[Model],
    dataset: Input[Dataset],
    pruned_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    enabled: bool = False,
    sparsity: float = 0.5,
    max_drop: float = 1.0,
    distill_alpha: float = 0.5,
    distill_temperature: float = 2.0,
    recovery_epochs: float = 1.0,
) -> NamedTuple("PruneOutputs", [("pruned", bool)]):
    """Prune ``model`` (top layers, feed-forward neurons) and recover it by distillation; off: pass it through.

    When on, both models are also exported and the report/metrics hold the size, latency and test accuracy of
    {fp32, int8} x {unpruned, pruned} with the Pareto front marked.

    Args:
        enabled: Prune at all (off: the model is passed on unchanged).
        sparsity: Fraction of encoder-layer parameters to remove, in (0, 1).
        max_drop: Largest validation-accuracy drop in points; beyond it the unpruned model is passed on.
        distill_alpha: Weight of the distillation KL (the task loss gets 1 - alpha).
        distill_temperature: Distillation temperature.
        recovery_epochs: Epochs of the recovery fine-tune.

    Returns:
        Whether the model passed on is the pruned one.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.prune.gate import prune_step

    result = prune_step(Path(model.path), Path(dataset.path), Path(pruned_model.path), enabled=enabled,
                        max_drop=max_drop, sparsity=sparsity, distill_alpha=distill_alpha,
                        distill_temperature=distill_temperature, recovery_epochs=recovery_epochs, compare=True)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2), encoding="utf-8")
    shutil.copyfile(result.report_html, report.path)
    pruned_model.metadata.update({"pruned": result.pruned, "reason": result.reason})
    return namedtuple("PruneOutputs", ["pruned"])(result.pruned)
