"""`transferkit evaluate`: metrics of a fine-tuned model on the test split, with a report."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


@handle_errors
def evaluate(
    model: Path = typer.Option(
        ..., "--model", help="Fine-tuned model directory (from `transferkit train`); text or image classifier."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Prepared dataset directory (from `transferkit data prepare`) of the model's modality."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory: metrics.json, report.html/.md, predictions."),
    baseline: str | None = typer.Option(
        None, "--baseline",
        help="Baseline model for deltas (directory or catalog name; a text model without head = zero-shot; "
             "images: an image classifier directory; generative tasks: the zero-shot model, default the base "
             "model of training_summary.json).",
    ),
    split: str = typer.Option("test", "--split", help="Split to evaluate."),
    primary_metric: str = typer.Option(
        "accuracy", "--primary-metric",
        help="Metric reported as `primary` (generative tasks: rougeL unless rouge1/rouge2 is given).",
    ),
    min_primary: float | None = typer.Option(
        None, "--min-primary", help="Fail (exit 3) when the primary metric is below this."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per forward pass."),
    max_length: int | None = typer.Option(
        None, "--max-length",
        help="Text: truncation length (default: the training length, else the model limit <= 256). Ignored for "
             "images.",
    ),
    slice_min_size: int = typer.Option(5, "--slice-min-size", help="Smallest slice counted in the largest gap."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle weights (runs code on load)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Accept custom model code."),
) -> None:
    """Evaluate a model on a prepared split; write metrics.json, predictions and an HTML/Markdown report."""
    from transferkit.evaluate import EvaluateConfig, evaluate_model

    result = evaluate_model(EvaluateConfig(
        model_dir=model, data_dir=data, out_dir=out, baseline=baseline, split=split,
        primary_metric=primary_metric, min_primary=min_primary, batch_size=batch_size, max_length=max_length,
        slice_min_size=slice_min_size, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    ))
    scalars = result.scalars
    # Classification leads with accuracy and macro F1; a task with other metrics (ROUGE) shows its own.
    shown = {"accuracy": "accuracy", "macro_f1": "macro F1"} if "macro_f1" in scalars else {k: k for k in scalars}
    console.print(
        f"{result.n_examples} examples: " + ", ".join(f"{label} {scalars[k]:.4f}" for k, label in shown.items())
        + f", {result.primary_metric} {result.primary:.4f}"
        + (f" (baseline delta {result.baseline['deltas'].get(result.primary_metric, float('nan')):+.4f})"
           if result.baseline else "")
    )
    if result.slices and result.slices.get("gap") is not None:
        console.print(f"largest slice gap ({result.slices['gap_metric']}): {result.slices['gap']:.4f} "
                      f"({result.slices['best']} vs {result.slices['worst']})")
    console.print(f"wrote {result.metrics_path} and {result.report_html}")
    result.raise_if_failed()
