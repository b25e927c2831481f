"""The python-backend custom metrics: counts per batch of requests, exact totals, one increment per counter."""

import importlib.util
from pathlib import Path

import numpy as np

import transferkit.serve.triton_models as triton_models


def _monitor_client():
    path = Path(triton_models.__file__).parent / "monitor_client.py"
    spec = importlib.util.spec_from_file_location("monitor_client_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Metric:
    def __init__(self, calls: list, labels: dict) -> None:
        self.calls, self.labels, self.value = calls, labels, 0.0

    def increment(self, value: float) -> None:
        self.calls.append((tuple(sorted(self.labels.items())), value))
        self.value += value


class _Family:
    COUNTER = "counter"

    def __init__(self, name: str, description: str, kind: str, calls: list, registry: dict) -> None:
        self.name, self.calls, self.registry = name, calls, registry

    def Metric(self, labels: dict) -> _Metric:
        metric = _Metric(self.calls, labels)
        self.registry[(self.name, tuple(sorted(labels.items())))] = metric
        return metric


class _PbUtils:
    """Records every increment, like the server would receive them (the stand-in of triton_python_backend_utils)."""

    def __init__(self) -> None:
        self.calls: list = []
        self.registry: dict = {}
        outer = self

        class MetricFamily(_Family):
            COUNTER = "counter"

            def __init__(self, name: str, description: str, kind: str) -> None:
                super().__init__(name, description, kind, outer.calls, outer.registry)

        self.MetricFamily = MetricFamily


def test_a_batch_of_requests_is_sent_once_per_counter_with_exact_totals():
    client = _monitor_client()
    pb = _PbUtils()
    metrics = client.ServingMetrics(pb, "movies", ["negative", "positive"])
    rng = np.random.default_rng(0)
    requests = [(rng.integers(0, 2, size=3), rng.uniform(0.5, 1.0, size=3), rng.integers(5, 40, size=3))
                for _ in range(8)]
    for predictions, confidences, lengths in requests:
        metrics.observe(predictions, confidences, lengths)
    assert pb.calls == []  # nothing sent per request
    metrics.flush()
    sent = {key: metric.value for key, metric in pb.registry.items() if metric.value}
    predictions = np.concatenate([r[0] for r in requests])
    assert sent[("transferkit_items_total", (("model", "movies"),))] == 24
    for index, label in enumerate(["negative", "positive"]):
        key = ("transferkit_predictions_total", (("label", label), ("model", "movies")))
        assert sent.get(key, 0.0) == np.sum(predictions == index)
    total_confidence = sum(float(np.sum(r[1])) for r in requests)
    assert np.isclose(sent[("transferkit_confidence_sum_total", (("model", "movies"),))], total_confidence)
    assert sent[("transferkit_input_length_sum_total", (("model", "movies"),))] == sum(int(np.sum(r[2]))
                                                                                       for r in requests)
    bins = sum(v for (name, _), v in sent.items() if name == "transferkit_confidence_bin_total")
    assert bins == 24
    # One round trip per counter that changed, however many requests the batch held.
    assert len(pb.calls) == len(sent) and len(pb.calls) <= 2 + len(client.CONFIDENCE_BINS) + 3
    metrics.flush()  # nothing new: nothing sent
    assert len(pb.calls) == len(sent)
