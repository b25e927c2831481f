"""Baseline of a real MiniLM export, and the monitor service over HTTP: windows, metrics, reports, feedback."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.helpers import write_movie_slice
from tests.unit.serve.exported import shared_export
from transferkit.data.prepared import load_prepared
from transferkit.errors import MonitorError
from transferkit.monitor import DriftConfig, load_baseline, write_baseline
from transferkit.monitor.baseline import ServedGraph
from transferkit.monitor.replay import records_from_outputs
from transferkit.monitor.service import MonitorServer
from transferkit.monitor.state import Monitor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    data = write_movie_slice(root / "data", train=8, validation=60, test=60)
    export = root / "export"
    import shutil

    shutil.copytree(shared_export(), export)
    write_baseline(export, data, size=50)
    return export, data


def _post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def test_baseline_is_what_the_served_graph_sees(setup):
    export, data = setup
    baseline = load_baseline(export)
    assert baseline.embeddings.shape == (50, 384) and baseline.labels == ["negative", "positive"]
    assert set(baseline.features) == {"length", "unk_rate"}
    assert baseline.meta["graph_file"] == "model.onnx" and "pooler" in baseline.meta["head_tensor"]
    summary = json.loads((export / "monitor_baseline" / "baseline.json").read_text())
    assert sum(summary["confidence_histogram"]["counts"]) == 50
    assert summary["features"]["length"]["p50"] > 5
    # The int8 graph's head input is found through MatMulInteger and stays close to fp32.
    texts = load_prepared(data).texts("validation")[:8]
    fp32, int8 = ServedGraph(export, "fp32").run(texts), ServedGraph(export, "int8").run(texts)
    cosine = (fp32["embeddings"] * int8["embeddings"]).sum(1) / (
        np.linalg.norm(fp32["embeddings"], axis=1) * np.linalg.norm(int8["embeddings"], axis=1))
    assert cosine.min() > 0.95


def test_bad_baseline_folder_is_one_line_error(tmp_path):
    with pytest.raises(MonitorError, match="expected a monitoring baseline"):
        load_baseline(tmp_path)


def test_service_windows_metrics_reports_feedback_groups(setup, tmp_path):
    export, data = setup
    graph = ServedGraph(export)
    texts = load_prepared(data).texts("test")
    labels = load_prepared(data).label_names("test")
    in_dist = records_from_outputs(graph.run(texts[:30]), graph.inputs.features, "movie",
                                   groups=["a", "b"] * 15)
    # Shifted traffic: each review said five times (token lengths far above the baseline's).
    shifted = records_from_outputs(graph.run([" ".join([t] * 5) for t in texts[30:60]]), graph.inputs.features,
                                   "long")
    monitor = Monitor(load_baseline(export), DriftConfig(window_size=30, permutations=200), tmp_path / "reports",
                      model="sentiment")
    with MonitorServer(monitor, port=0) as server:
        assert _post(f"{server.url}/v1/records", {"records": in_dist[:10]}) == {"accepted": 10}
        _post(f"{server.url}/v1/records", {"records": in_dist[10:]})
        _post(f"{server.url}/v1/records", {"records": shifted})
        monitor.wait()
        windows = json.loads(_get(f"{server.url}/v1/windows"))
        assert [w["size"] for w in windows] == [30, 30]
        assert not windows[0]["drift"]["drift"]
        assert windows[1]["drift"]["drift"] and windows[1]["drift"]["tests"]["length_ks"]["drift"]
        assert set(windows[0]["group_rates"]) == {"a", "b"} and set(windows[0]["group_gap"]) == {"negative",
                                                                                                 "positive"}
        feedback = [{"request_id": f"movie-{i}", "label": labels[i]} for i in range(30)]
        assert _post(f"{server.url}/v1/feedback", {"labels": [*feedback, {"request_id": "x", "label": "positive"}]}) \
            == {"matched": 30, "unknown": 1}
        expected = np.mean([graph.spec.labels[r["prediction"]] == labels[i] for i, r in enumerate(in_dist)])
        metrics = _get(f"{server.url}/metrics")
        assert f'transferkit_monitor_live_accuracy{{model="sentiment"}} {expected}' in metrics
        assert 'transferkit_monitor_drift_detected{model="sentiment",test="length_ks"} 1.0' in metrics
        assert 'transferkit_monitor_windows_total{model="sentiment"} 2.0' in metrics
        assert 'transferkit_monitor_records_total{model="sentiment"} 60.0' in metrics
        html = _get(f"{server.url}/reports/window-1.html")
        assert "DRIFT DETECTED" in html and "length_ks" in html
        assert "Accuracy" in _get(f"{server.url}/reports/window-0.html")
        bad = dict(in_dist[0], embedding=[0.0, 1.0])
        with pytest.raises(urllib.error.HTTPError) as caught:
            _post(f"{server.url}/v1/records", {"records": [in_dist[1], bad]})
        assert caught.value.code == 400
        assert "records[1].embedding: expected 384 finite numbers" in json.loads(caught.value.read())["error"]
        assert json.loads(_get(f"{server.url}/healthz"))["windows"] == 2
