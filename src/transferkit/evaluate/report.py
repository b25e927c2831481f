"""HTML + Markdown reports of the evaluate step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit.evaluate import charts
from transferkit.evaluate.metrics import LOWER_IS_BETTER, ClassificationMetrics
from transferkit.reporting import Report

if TYPE_CHECKING:
    import numpy as np

    from transferkit.evaluate.evaluation import EvaluateConfig

_TEXT_LIMIT = 300


def _short(text: str | None) -> str:
    if text is None:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def write_evaluation_report(
    out: Path,
    cfg: EvaluateConfig,
    computed: ClassificationMetrics,
    slices: dict[str, Any] | None,
    baseline: ClassificationMetrics | None,
    baseline_info: dict[str, Any] | None,
    mistakes: list[dict[str, Any]],
    *,
    n_examples: int,
    max_length: int | None,
    image_size: int | None = None,
    thumbnails: Sequence[np.ndarray] | None = None,
    text_inputs: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md`` / ``report.html`` (+ PNGs) into ``out``; return their paths.

    Image evaluations pass ``image_size`` (the model input size) and ``thumbnails`` (one per entry of
    ``mistakes``), which become a contact sheet of the most confident mistakes.
    """
    report = Report(f"Evaluation: {cfg.model_dir.name}")
    primary = computed.scalars[cfg.primary_metric]
    inputs = (f"images preprocessed to {image_size}x{image_size} pixels" if image_size is not None
              else f"inputs truncated at {max_length} tokens")
    if text_inputs is not None:
        from transferkit.data.long_text import TextInputs

        inputs = TextInputs.from_dict(text_inputs).describe()
    report.paragraph(
        f"Model {cfg.model_dir} on the {cfg.split} split of {cfg.data_dir} ({n_examples} examples, "
        f"{inputs}). Primary metric {cfg.primary_metric} = {primary:.4f}."
    )
    report.heading("Metrics")
    order = [k for k in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "balanced_accuracy", "roc_auc",
                         "pr_auc", "ece", "loss") if k in computed.scalars]
    if baseline is not None and baseline_info is not None:
        rows = []
        for key in order:
            base_value = baseline.scalars.get(key)
            delta = computed.scalars[key] - base_value if base_value is not None else None
            rows.append([key, computed.scalars[key], base_value if base_value is not None else "n/a",
                         f"{delta:+.4f}" if delta is not None else "n/a"])
        report.table(["metric", "model", f"baseline ({baseline_info['mode']})", "delta"], rows)
        report.paragraph(
            f"Baseline: {baseline_info['model']}. Lower is better for {', '.join(sorted(LOWER_IS_BETTER))}.",
            "note",
        )
    else:
        report.table(["metric", "value"], [[key, computed.scalars[key]] for key in order])
    report.paragraph(
        "ECE = expected calibration error (top-label, equal-width bins); loss = cross-entropy of the predicted "
        "probabilities.", "note",
    )

    report.heading("Confusion matrix")
    report.figure("confusion_matrix.png", charts.confusion_heatmap(computed.labels, computed.confusion_matrix),
                  "Confusion matrix heat map")

    report.heading("Per-class metrics")
    report.figure("per_class.png", charts.per_class_bars(computed.per_class), "Per-class precision, recall, F1")
    report.table(
        ["label", "precision", "recall", "f1", "support"],
        [[r["label"], r["precision"], r["recall"], r["f1"], r["support"]] for r in computed.per_class],
    )
    if computed.roc is not None:
        report.heading("ROC and precision-recall curves")
        report.figure("roc_pr.png", charts.roc_pr_curves(computed.roc, computed.pr, computed.labels[1]),
                      "ROC and PR curves")

    report.heading("Calibration")
    report.figure("reliability.png", charts.reliability_diagram(computed.calibration.to_dict()),
                  "Reliability diagram")
    report.paragraph(
        "Bars show the accuracy of predictions whose confidence falls in each bin; a calibrated model follows the "
        "diagonal.", "note",
    )

    if slices is not None:
        report.heading("Slices (group column)")
        report.figure("slices.png", charts.slice_bars(slices), "Metric per slice")
        report.table(
            ["group", "n", "accuracy", "macro_f1", "weighted_f1"],
            [[r["group"], r["n"], r["accuracy"], r["macro_f1"], r["weighted_f1"]] for r in slices["slices"]],
        )
        if slices["gap"] is not None:
            report.paragraph(
                f"Largest {slices['gap_metric']} gap: {slices['gap']:.4f} between {slices['best']} (best) and "
                f"{slices['worst']} (worst); slices under {slices['min_size']} examples are not counted."
            )
        else:
            report.paragraph(f"Fewer than two slices have at least {slices['min_size']} examples: no gap reported.")

    report.heading("Most confident mistakes")
    if mistakes and thumbnails is not None:
        captions = [f"row {m['row']}: {m['true']} -> {m['predicted']}\n({m['confidence']:.2f})" for m in mistakes]
        report.figure(
            "mistakes.png",
            charts.contact_sheet(list(thumbnails), captions, "Most confident mistakes (true -> predicted)"),
            "Contact sheet of the most confident mistakes",
        )
        report.table(
            ["row", "confidence", "true", "predicted"],
            [[m["row"], m["confidence"], m["true"], m["predicted"]] for m in mistakes],
        )
        report.paragraph("Rows index the evaluated split; thumbnails show the stored images before preprocessing.",
                         "note")
    elif mistakes:
        # The task's own fields of a mistaken row (EvalInputs.mistake_fields: a text and its pair) follow.
        shown = [key for key in mistakes[0] if key not in ("row", "confidence", "true", "predicted")]
        report.table(
            ["row", "confidence", "true", "predicted", *shown],
            [[m["row"], m["confidence"], m["true"], m["predicted"],
              *(_short(str(m[key])) if m[key] is not None else "" for key in shown)] for m in mistakes],
        )
    else:
        report.paragraph("No mistakes on this split.")
    return report.write(out, stem="report")
