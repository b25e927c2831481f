"""The real local Triton reports custom metrics and samples pooled embeddings to a running monitor."""

import json
import shutil
import time
import urllib.request

import numpy as np
import pytest

from tests.helpers import write_movie_slice
from tests.unit.serve.exported import shared_export
from transferkit.data.prepared import load_prepared
from transferkit.monitor import DriftConfig, load_baseline, write_baseline
from transferkit.monitor.baseline import ServedGraph
from transferkit.monitor.replay import replay_triton
from transferkit.monitor.service import MonitorServer
from transferkit.monitor.state import Monitor
from transferkit.serve.local import LocalTriton
from transferkit.serve.repository import RepositoryOptions, build_model_repository

pytestmark = pytest.mark.integration
NAME = "sentiment"


def test_triton_metrics_and_sampled_records_reach_the_monitor(tmp_path):
    export = tmp_path / "export"
    shutil.copytree(shared_export(), export)
    data = write_movie_slice(tmp_path / "data", train=8, validation=40, test=40)
    write_baseline(export, data, size=40)
    texts = load_prepared(data).texts("test")
    monitor = Monitor(load_baseline(export), DriftConfig(window_size=20, permutations=200), tmp_path / "reports",
                      model=NAME)
    with MonitorServer(monitor, port=0) as server:
        options = RepositoryOptions(instance_kind="cpu", monitor_url=server.url, monitor_sample_rate=1.0)
        bundle = build_model_repository(export, NAME, tmp_path / "repository", options=options)
        with LocalTriton(bundle.root, models=[NAME], exit_timeout=3) as triton:
            ids = [f"req-{i}" for i in range(len(texts))]
            labels = replay_triton(triton.http_url, NAME, texts, ids)
            assert set(labels) <= {"negative", "positive"}
            deadline = time.monotonic() + 30
            while len(monitor.windows) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            monitor.wait()
            with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
                metrics = response.read().decode()
        assert sum(len(w.records) for w in monitor.windows) == 40
        # Triton's own /metrics: every item counted by label, confidence bins and token lengths.
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("transferkit_predictions_total{") and f'model="{NAME}"' in line)
        assert counted == 40
        assert f'transferkit_items_total{{model="{NAME}"}} 40' in metrics
        assert "transferkit_confidence_bin_total{" in metrics and "transferkit_input_length_sum_total{" in metrics
    # The served embedding of a request is the baseline graph's embedding of the same text (same graph file).
    records = {r.request_id: r for w in monitor.windows for r in w.records}
    offline = ServedGraph(export).run(texts[:5])
    for i in range(5):
        served = records[ids[i]]
        np.testing.assert_allclose(served.embedding, offline["embeddings"][i], atol=1e-4)
        assert served.features["length"] == offline["length"][i]
        assert served.prediction == offline["predictions"][i]
    assert all(w.drift is not None for w in monitor.windows)
    assert json.loads((tmp_path / "reports" / "window-1.json").read_text())["size"] == 20


def test_production_ensemble_reports_custom_metrics_from_postprocess(tmp_path):
    options = RepositoryOptions(instance_kind="cpu", local_fast_path=False)
    bundle = build_model_repository(shared_export(), "ens", tmp_path / "repository", options=options)
    with LocalTriton(bundle.root, models=["ens"], exit_timeout=3) as triton:
        replay_triton(triton.http_url, "ens", ["A fine film.", "Awful.", "Fine."], ["a", "b", "c"])
        with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
            metrics = response.read().decode()
    assert 'transferkit_items_total{model="ens"} 3' in metrics
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("transferkit_predictions_total{") and 'model="ens"' in line)
    assert counted == 3
