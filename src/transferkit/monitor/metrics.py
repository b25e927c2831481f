"""Prometheus metrics of the monitor (``prometheus-client``), in a registry of their own.

Names (every metric has a ``model`` label):

- ``transferkit_monitor_records_total``, ``transferkit_monitor_windows_total``,
  ``transferkit_monitor_drift_windows_total``, ``transferkit_monitor_feedback_total`` (counters);
- ``transferkit_monitor_drift_p_value{test}``, ``transferkit_monitor_drift_statistic{test}``,
  ``transferkit_monitor_drift_detected{test}`` (0/1; ``test="any"`` is the window verdict),
  ``transferkit_monitor_drift_threshold`` (corrected per-test p-value threshold), of the latest window;
- ``transferkit_monitor_mean_confidence``, ``transferkit_monitor_baseline_mean_confidence``,
  ``transferkit_monitor_prediction_rate{label}`` (latest window and baseline, ``source`` label);
- ``transferkit_monitor_live_accuracy`` and ``transferkit_monitor_labelled_records`` of the latest window with
  late labels;
- ``transferkit_monitor_group_prediction_rate{group,label}`` and ``transferkit_monitor_group_rate_gap{label}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

PREFIX = "transferkit_monitor"


class MonitorMetrics:
    """The gauges and counters of one monitored model."""

    def __init__(self, model: str, baseline: Any) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        reg = {"registry": self.registry}

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, ("model", *labels), **reg)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, ("model",), **reg).labels(model)

        self.records = counter("records", "Sampled records received.")
        self.windows = counter("windows", "Windows closed and tested.")
        self.drift_windows = counter("drift_windows", "Windows in which at least one test detected drift.")
        self.feedback = counter("feedback", "Late labels matched to sampled predictions.")
        self.p_value = gauge("drift_p_value", "p-value of each drift test on the latest window.", ("test",))
        self.statistic = gauge("drift_statistic", "Statistic of each drift test on the latest window.", ("test",))
        self.detected = gauge("drift_detected", "1 when the test detected drift on the latest window.", ("test",))
        self.threshold = gauge("drift_threshold", "Bonferroni-corrected p-value threshold of each test.")
        self.confidence = gauge("mean_confidence", "Mean top-class probability of the latest window.")
        self.baseline_confidence = gauge("baseline_mean_confidence", "Mean top-class probability of the baseline.")
        self.rate = gauge("prediction_rate", "Share of predictions per class.", ("label", "source"))
        self.accuracy = gauge("live_accuracy", "Accuracy from late labels of the latest labelled window.")
        self.labelled = gauge("labelled_records", "Records with a late label in the latest labelled window.")
        self.window_index = gauge("window_index", "Index of the latest tested window.")
        self.group_rate = gauge("group_prediction_rate", "Share of predictions per class and group.",
                                ("group", "label"))
        self.group_gap = gauge("group_rate_gap", "Highest minus lowest group rate of a class.", ("label",))
        self.baseline_confidence.labels(model).set(float(np.mean(baseline.confidences)))
        counts = np.bincount(baseline.predictions, minlength=len(baseline.labels))
        for label, count in zip(baseline.labels, counts, strict=True):
            self.rate.labels(model, label, "baseline").set(float(count) / max(1, counts.sum()))

    def publish_window(self, window: Any) -> None:
        """Set the gauges of a tested window."""
        result, m = window.drift, self.model
        for name, test in result.tests.items():
            self.p_value.labels(m, name).set(test.p_value)
            self.statistic.labels(m, name).set(test.statistic)
            self.detected.labels(m, name).set(int(test.drift))
        self.detected.labels(m, "any").set(int(result.drift))
        self.threshold.labels(m).set(result.threshold)
        self.confidence.labels(m).set(result.mean_confidence)
        for label, rate in result.prediction_rates.items():
            self.rate.labels(m, label, "window").set(rate)
        for group, rates in window.group_rates.items():
            for label, rate in rates.items():
                self.group_rate.labels(m, group, label).set(rate)
        for label, gap in window.group_gap.items():
            self.group_gap.labels(m, label).set(gap)
        self.window_index.labels(m).set(window.index)
        self.windows.inc()
        if result.drift:
            self.drift_windows.inc()

    def publish_accuracy(self, window: Any) -> None:
        """Set live accuracy from a window that received late labels."""
        if window.accuracy is not None:
            self.accuracy.labels(self.model).set(window.accuracy)
            self.labelled.labels(self.model).set(window.labelled)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
