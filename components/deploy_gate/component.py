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
        task: The pipeline's task, named in the decision ("" = text-classification). Every task's export is
            deployable: classifiers as an ensemble, generative models (summarization, instruction) as a streaming
            decoupled model (the task registry's ``served_export``).

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
    name = get_task(task or DEFAULT_TASK).name  # an unknown task fails here, before anything is deployed
    deploy = all(ok for _, ok in checks)
    lines += ["", f"**{'Deploying' if deploy else 'Not deploying'}** the {name} model."]
    with open(decision.path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return deploy
