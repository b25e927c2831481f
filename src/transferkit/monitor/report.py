"""The HTML/Markdown report of one monitoring window."""

from __future__ import annotations

from typing import Any

from transferkit.reporting import Report


def window_report(window: Any, baseline: Any, config: Any, model: str) -> Report:
    """Verdict, every test with its p-value, prediction rates, live accuracy and group rates of one window."""
    report = Report(f"Monitoring: {model}, window {window.index}")
    result = window.drift
    if result is None:
        report.paragraph("Not tested yet.")
        return report
    verdict = "DRIFT DETECTED" if result.drift else "no drift detected"
    report.paragraph(f"{len(window.records)} sampled records against a baseline of {len(baseline.predictions)} "
                     f"{baseline.meta.get('split', '')} rows ({baseline.meta.get('graph_file', 'served graph')}): "
                     f"{verdict}. Each test is held to p < {result.threshold:.4g} (alpha {config.alpha:g}, "
                     "Bonferroni over the tests of the window).")
    report.heading("Tests")
    report.table(["test", "statistic", "p-value", "drift"],
                 [[name, test.statistic, test.p_value, "yes" if test.drift else "no"]
                  for name, test in result.tests.items()])
    report.heading("Predictions")
    baseline_rates = baseline.summary()["prediction_distribution"]
    report.table(["label", "baseline rate", "window rate"],
                 [[label, baseline_rates[label], rate] for label, rate in result.prediction_rates.items()])
    report.paragraph(f"Mean confidence {result.mean_confidence:.4f} (baseline {result.baseline_mean_confidence:.4f}).")
    report.heading("Live quality")
    if window.accuracy is None:
        report.paragraph("No late labels yet (transferkit monitor feedback).")
    else:
        report.paragraph(f"Accuracy {window.accuracy:.4f} over {window.labelled} labelled records.")
    if window.group_rates:
        report.heading("Groups")
        labels = baseline.labels
        report.table(["group", *labels], [[g, *(r[lab] for lab in labels)] for g, r in window.group_rates.items()])
        if window.group_gap:
            report.paragraph("Largest gap between groups: " + ", ".join(
                f"{lab} {gap:.4f}" for lab, gap in window.group_gap.items()))
    return report
