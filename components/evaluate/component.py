"""KFP component: evaluate a fine-tuned model on the test split."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    report_md: Output[Markdown],
    primary_metric: str = "accuracy",
    baseline_model: str = "",
) -> NamedTuple("EvaluateOutputs", [("primary", float), ("accuracy", float)]):
    """Compute test metrics, slice metrics and calibration; render the confusion matrix and report.

    Args:
        primary_metric: Metric used by the deploy gate (accuracy, macro_f1, roc_auc...).
        baseline_model: Optional model (catalog name or path) evaluated alongside for deltas.

    Returns:
        The primary metric value and accuracy (0.0 for generative tasks, which have no accuracy; their primary
        metric is ROUGE-L).
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.evaluate import EvaluateConfig, evaluate_model

    out = Path(report.path).parent / "evaluation"
    result = evaluate_model(EvaluateConfig(
        model_dir=Path(model.path), data_dir=Path(dataset.path), out_dir=out, primary_metric=primary_metric,
        baseline=baseline_model or None, progress=False,
    ))
    for name, value in result.scalars.items():
        metrics.log_metric(name, float(value))
    if result.labels:  # generative tasks have no classes
        classification_metrics.log_confusion_matrix(result.labels, result.confusion_matrix)
    if result.roc:
        classification_metrics.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["thresholds"])
    for artifact in (metrics, classification_metrics):
        Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2), encoding="utf-8")
    shutil.copyfile(result.report_html, report.path)
    shutil.copyfile(result.report_md, report_md.path)
    return namedtuple("EvaluateOutputs", ["primary", "accuracy"])(result.primary,
                                                                       float(result.scalars.get("accuracy", 0.0)))
