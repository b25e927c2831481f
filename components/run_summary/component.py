"""KFP component: the exit handler that records how the run ended."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def run_summary(
    status: dsl.PipelineTaskFinalStatus,
    base_model: str,
    dataset_uri: str,
    model_name: str,
    summary: Output[Markdown],
) -> str:
    """Write a run summary whatever the outcome (runs as the pipeline's exit handler).

    Returns:
        The final pipeline state (``SUCCEEDED``, ``FAILED``...).
    """
    lines = [
        "# transferkit run summary", "",
        "| field | value |", "|---|---|",
        f"| pipeline run | {status.pipeline_job_resource_name} |",
        f"| state | {status.state} |",
        f"| base model | {base_model} |",
        f"| dataset | {dataset_uri} |",
        f"| model name | {model_name} |",
    ]
    if status.error_code or status.error_message:
        lines.append(f"| error | {status.error_code}: {status.error_message} |")
    with open(summary.path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return status.state
