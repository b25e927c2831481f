"""KFP component: the single deploy decision (kfp conditions test one value, so gates are combined here)."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def deploy_gate(
    primary: float,
    min_primary: float,
    forgetting_passed: bool,
    export_passed: bool,
    decision: Output[Markdown],
    task: str = "",
) -> bool:
    """Return True only when the metric threshold, the forgetting budget and the export gates all hold.

    Args:
        primary: The evaluate step's primary metric.
        min_primary: Threshold the primary metric must reach.
        forgetting_passed: The forgetting check's verdict.
        export_passed: The export step's verdict.
        task: The pipeline's task; a task whose exports the deploy step cannot publish (generative models) ends
            the run here, after evaluate and export, without deploying ("" = text-classification).

    Returns:
        Whether to deploy.
    """
    from transferkit.tasks import DEFAULT_TASK, get_task

    checks = [
        (f"primary metric {primary:.4f} >= {min_primary:.4f}", primary >= min_primary),
        ("forgetting budget held", forgetting_passed),
        ("export parity and accuracy gates held", export_passed),
    ]
    lines = ["# Deploy decision", "", "| check | result |", "|---|---|"]
    lines += [f"| {text} | {'pass' if ok else 'FAIL'} |" for text, ok in checks]
    unsupported = get_task(task or DEFAULT_TASK).pipeline_deploy_unsupported
    deploy = all(ok for _, ok in checks) and unsupported is None
    if unsupported is not None:
        lines += ["", f"Task {task}: the run ends after evaluate and export, without deploying: {unsupported}."]
    lines += ["", f"**{'Deploying' if deploy else 'Not deploying'}.**"]
    with open(decision.path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return deploy
