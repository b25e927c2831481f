"""Monitoring from inside the python backend: Triton custom metrics and sampled records for the monitor.

Copied beside the local text fast path (``text_model.py``) and imported by it; runs in the stub with the
serving venv (numpy, stdlib), never inside transferkit.

- :class:`ServingMetrics` reports every request item as Triton custom metrics (``pb_utils.MetricFamily``,
  served on Triton's own ``/metrics``, no extra hop): predictions per label, a confidence histogram as
  per-bin counters, and the sums of confidences and token lengths (means in PromQL: sum / items).
- :class:`RecordSender` posts a sampled fraction of items (pooled embedding, prediction, confidence, input
  features, request id, optional group) to ``<monitor_url>/v1/records`` from a background thread. The
  request path only appends to a bounded queue: a slow or absent monitor drops records (counted), it never
  delays or fails an inference.
"""

import json
import queue
import random
import threading
import time
import urllib.request

import numpy as np

CONFIDENCE_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
QUEUE_LIMIT = 2048
BATCH = 64
FLUSH_SECONDS = 0.5


class ServingMetrics:
    """Counters of one served model in Triton's metrics registry."""

    def __init__(self, pb_utils, model, labels):
        self.pb_utils = pb_utils
        counter = pb_utils.MetricFamily.COUNTER

        # Triton invalidates a family's metrics when the family object is collected: keep every family.
        self.families = []

        def family(name, description):
            self.families.append(pb_utils.MetricFamily(name=name, description=description, kind=counter))
            return self.families[-1]

        predictions = family("transferkit_predictions_total", "Predicted items per label.")
        bins = family("transferkit_confidence_bin_total",
                      "Predicted items per top-class probability bin (upper edge le).")
        self.by_label = [predictions.Metric(labels={"model": model, "label": str(label)}) for label in labels]
        self.by_bin = [bins.Metric(labels={"model": model, "le": f"{edge:g}"}) for edge in CONFIDENCE_BINS]
        self.items = family("transferkit_items_total", "Predicted items.").Metric(labels={"model": model})
        self.confidence_sum = family("transferkit_confidence_sum_total",
                                     "Sum of top-class probabilities.").Metric(labels={"model": model})
        self.length_sum = family("transferkit_input_length_sum_total",
                                 "Sum of input lengths (tokens).").Metric(labels={"model": model})
        self.sampled = family("transferkit_monitor_sampled_total",
                              "Items queued for the monitor.").Metric(labels={"model": model})
        self.dropped = family("transferkit_monitor_dropped_total",
                              "Sampled items dropped (monitor slow or unreachable).").Metric(labels={"model": model})

        self._reset()

    def _reset(self):
        self.pending_labels = np.zeros(len(self.by_label))
        self.pending_bins = np.zeros(len(self.by_bin))
        self.pending_items = self.pending_confidence = self.pending_length = 0.0

    def observe(self, predictions, confidences, lengths):
        """Count one request's items (sent by :meth:`flush`)."""
        self.pending_labels += np.bincount(predictions, minlength=len(self.by_label))[: len(self.by_label)]
        bins = np.searchsorted(CONFIDENCE_BINS, confidences, side="left").clip(0, len(CONFIDENCE_BINS) - 1)
        self.pending_bins += np.bincount(bins, minlength=len(self.by_bin))
        self.pending_items += float(len(predictions))
        self.pending_confidence += float(np.sum(confidences))
        self.pending_length += float(np.sum(lengths))

    def flush(self):
        """Send what :meth:`observe` counted, once per batch of requests.

        Every ``increment`` is a round trip from the python-backend stub to the server; a batch of requests
        pays them once instead of once per request.
        """
        pending = [(self.by_label[i], self.pending_labels[i]) for i in self.pending_labels.nonzero()[0]]
        pending += [(self.by_bin[i], self.pending_bins[i]) for i in self.pending_bins.nonzero()[0]]
        pending += [(metric, value) for metric, value in ((self.items, self.pending_items),
                                                            (self.confidence_sum, self.pending_confidence),
                                                            (self.length_sum, self.pending_length)) if value]
        self._reset()
        try:
            for metric, value in pending:
                metric.increment(float(value))
        except Exception as exc:  # monitoring never fails a request
            self.pb_utils.Logger.log_warn(f"monitoring metrics: {exc}")


class RecordSender:
    """Bounded queue + background poster of sampled records (see the module docstring)."""

    def __init__(self, url, sample_rate, metrics=None, seed=None, log=None):
        self.url = url.rstrip("/") + "/v1/records"
        self.sample_rate = float(sample_rate)
        self.metrics = metrics
        self.random = random.Random(seed)
        self.queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self.failures = 0
        self.log = log
        self.thread = threading.Thread(target=self._loop, name="transferkit-monitor", daemon=True)
        self.thread.start()

    def sample(self, count):
        """Indices of the ``count`` items of a request that are sampled."""
        return [i for i in range(count) if self.random.random() < self.sample_rate]

    def offer(self, records):
        """Queue records without blocking; count those dropped on a full queue."""
        queued = dropped = 0
        for record in records:
            try:
                self.queue.put_nowait(record)
                queued += 1
            except queue.Full:
                dropped += 1
        if self.metrics is not None:
            if queued:
                self.metrics.sampled.increment(float(queued))
            if dropped:
                self.metrics.dropped.increment(float(dropped))

    def _loop(self):
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + FLUSH_SECONDS
            while len(batch) < BATCH and time.monotonic() < deadline:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._post(batch)

    def _post(self, batch):
        body = json.dumps({"records": batch}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
            self.failures = 0
        except Exception as exc:  # the monitor is optional: drop, count, say so now and then
            self.failures += 1
            if self.metrics is not None:
                self.metrics.dropped.increment(float(len(batch)))
            if self.log is not None and (self.failures in (1, 10, 100) or self.failures % 1000 == 0):
                self.log(f"transferkit monitor: {self.url}: {exc} ({self.failures} failed posts)")


def request_id_and_group(request):
    """The request's id (may be empty) and its ``group`` parameter (or None)."""
    group = None
    try:
        params = json.loads(request.parameters() or "{}")
        value = params.get("group")
        group = str(value) if value is not None else None
    except Exception:  # parameters are optional metadata
        group = None
    return request.request_id() or "", group
