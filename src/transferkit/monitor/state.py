"""Windows of sampled served traffic: drift per window, live accuracy from late labels, per-group rates.

:class:`Monitor` is the service's state, independent of HTTP: records are appended to the open window; a full
window is closed and tested against the baseline on a worker thread (posting never waits for the tests), its
results are exposed as Prometheus metrics and written as ``window-<n>.html`` / ``.json`` reports.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import MonitorError
from transferkit.io import write_json
from transferkit.monitor.baseline import Baseline
from transferkit.monitor.config import DriftConfig
from transferkit.monitor.drift import DriftResult, check_window
from transferkit.monitor.metrics import MonitorMetrics
from transferkit.monitor.records import Record, parse_record
from transferkit.monitor.report import window_report

logger = logging.getLogger(__name__)

# Request ids remembered for late labels (oldest forgotten first); bounds memory of a long-running monitor.
MAX_REMEMBERED = 200_000


@dataclass
class Window:
    """One closed window and everything measured on it."""

    index: int
    records: list[Record]
    drift: DriftResult | None = None
    labelled: int = 0
    correct: int = 0
    group_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    group_gap: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        """Live accuracy over the records that received a label, or None."""
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``window-<n>.json``, ``GET /v1/windows``)."""
        return {"index": self.index, "size": len(self.records), "drift": self.drift.to_dict() if self.drift else None,
                "labelled": self.labelled, "accuracy": self.accuracy, "group_rates": self.group_rates,
                "group_gap": self.group_gap}


def group_rates(records: Sequence[Record], labels: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Predicted-class rates per group and, per class, the gap between the highest and lowest group rate."""
    by_group: dict[str, list[int]] = {}
    for record in records:
        if record.group is not None:
            by_group.setdefault(record.group, []).append(record.prediction)
    rates = {g: {lab: float(np.mean(np.asarray(p) == i)) for i, lab in enumerate(labels)} for g, p in by_group.items()}
    gaps = {lab: max(r[lab] for r in rates.values()) - min(r[lab] for r in rates.values()) for lab in labels} \
        if len(rates) >= 2 else {}
    return rates, gaps


class Monitor:
    """Windowed drift monitoring of one served model against its baseline.

    Args:
        baseline: The export's baseline.
        config: Window size and test settings.
        report_dir: Where ``window-<n>.html`` and ``.json`` are written (None: no files).
        model: Model name put on the metrics.
        background: Test closed windows on a worker thread (the service); False tests inline (replay, tests).
    """

    def __init__(self, baseline: Baseline, config: DriftConfig, report_dir: str | Path | None = None,
                 model: str = "model", background: bool = True) -> None:
        self.baseline, self.config, self.model = baseline, config, model
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.metrics = MonitorMetrics(model, baseline)
        self.windows: list[Window] = []
        self._open: list[Record] = []
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()  # request id -> (window, prediction)
        self._queue: queue.Queue[Window | None] | None = queue.Queue() if background else None
        self._worker = None
        if self._queue is not None:
            self._worker = threading.Thread(target=self._work, name="monitor-windows", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------------------------ records

    def add(self, raw_records: Sequence[Any]) -> int:
        """Validate and append posted records (all or none); returns how many were accepted.

        Raises:
            MonitorError: A malformed record, naming its row and field.
        """
        records = [parse_record(raw, row, self.baseline.labels, self.baseline.embedding_dim)
                   for row, raw in enumerate(raw_records)]
        closed = []
        with self._lock:
            for record in records:
                self._open.append(record)
                if len(self._open) >= self.config.window_size:
                    window = Window(len(self.windows), self._open)
                    self.windows.append(window)
                    for rec in window.records:
                        self._remember(rec.request_id, window.index, rec.prediction)
                    self._open = []
                    closed.append(window)
        self.metrics.records.inc(len(records))
        for window in closed:
            if self._queue is not None:
                self._queue.put(window)
            else:
                self._test(window)
        return len(records)

    def _remember(self, request_id: str, window: int, prediction: int) -> None:
        self._seen[request_id] = (window, prediction)
        self._seen.move_to_end(request_id)
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)

    def _work(self) -> None:
        assert self._queue is not None
        while (window := self._queue.get()) is not None:
            try:
                self._test(window)
            except Exception:  # the service keeps running; the window shows no result
                logger.exception("Testing window %d failed", window.index)
            finally:
                self._queue.task_done()

    def _test(self, window: Window) -> None:
        """Run the drift tests and group rates of a closed window; publish metrics and its report."""
        records = window.records
        arrays: dict[str, np.ndarray] = {
            "embeddings": np.stack([r.embedding for r in records]),
            "predictions": np.array([r.prediction for r in records], dtype=np.int64),
            "confidences": np.array([r.confidence for r in records], dtype=np.float64),
        }
        for name in self.baseline.features:
            values = [r.features.get(name) for r in records]
            if all(v is not None for v in values):
                arrays[name] = np.asarray(values, dtype=np.float64)
        result = check_window(self.baseline, arrays, self.config, seed=window.index)
        rates, gaps = group_rates(records, self.baseline.labels)
        with self._lock:
            window.drift, window.group_rates, window.group_gap = result, rates, gaps
        self.metrics.publish_window(window)
        logger.info("Window %d (%d records): drift=%s; %s", window.index, len(records), result.drift,
                    ", ".join(f"{k} p={t.p_value:.3g}" for k, t in result.tests.items()))
        self._write_report(window)

    def _write_report(self, window: Window) -> None:
        if self.report_dir is None:
            return
        write_json(self.report_dir / f"window-{window.index}.json", window.to_dict())
        window_report(window, self.baseline, self.config, self.model).write(self.report_dir,
                                                                            stem=f"window-{window.index}")

    def wait(self) -> None:
        """Block until every closed window has been tested."""
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        """Stop the worker after the queued windows."""
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=60)

    # ------------------------------------------------------------------------------------ feedback

    def feedback(self, pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
        """Join late labels to sampled predictions; update each window's live accuracy.

        Returns:
            ``{"matched": n, "unknown": m}`` (ids not sampled, still in the open window, or forgotten).

        Raises:
            MonitorError: A label that is not one of the model's labels, naming the row.
        """
        labels = self.baseline.labels
        for row, (_, label) in enumerate(pairs):
            if label not in labels:
                raise MonitorError(f"labels[{row}].label: {label!r} is not one of the model's labels {labels}")
        matched, touched = 0, set()
        with self._lock:
            for request_id, label in pairs:
                hit = self._seen.pop(request_id, None)
                if hit is None:
                    continue
                index, prediction = hit
                window = self.windows[index]
                window.labelled += 1
                window.correct += int(prediction == labels.index(label))
                matched += 1
                touched.add(index)
        for index in sorted(touched):
            window = self.windows[index]
            self.metrics.publish_accuracy(window)
            self._write_report(window)
        self.metrics.feedback.inc(matched)
        return {"matched": matched, "unknown": len(pairs) - matched}

    def summary(self) -> list[dict[str, Any]]:
        """Every closed window as a dict, oldest first."""
        with self._lock:
            return [w.to_dict() for w in self.windows]
