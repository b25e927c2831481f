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


def _send_images(url: str, model: str, items: list[bytes], ids: list[str]) -> list[str]:
    """One inference request per encoded image, with its request id; the labels (or the error message)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    answers = []
    for data, request_id in zip(items, ids, strict=True):
        tensor = httpclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        try:
            result = client.infer(model, [tensor], request_id=request_id)
            answers.append(result.as_numpy("label").reshape(-1)[0].decode("utf-8"))
        except InferenceServerException as exc:
            answers.append(f"error: {exc.message()}")
    return answers


def test_image_model_samples_embeddings_and_image_features(tmp_path):
    """Image deployments sample like text ones: the task's hook writes a one-model local entry with the monitor."""
    from tests.unit.serve.image_export import shared_image_export

    shared = shared_image_export()
    export = tmp_path / "export"
    shutil.copytree(shared.export_dir, export)
    items = load_prepared(shared.data_dir).images("test")[:24]
    monitor = Monitor(load_baseline(export), DriftConfig(window_size=12, permutations=200), tmp_path / "reports",
                      model="digits")
    with MonitorServer(monitor, port=0) as server:
        options = RepositoryOptions(instance_kind="cpu", monitor_url=server.url, monitor_sample_rate=1.0)
        bundle = build_model_repository(export, "digits", tmp_path / "repository", options=options)
        assert (bundle.root / "digits" / "configs" / "local.pbtxt").is_file()
        with LocalTriton(bundle.root, models=["digits"], exit_timeout=3) as triton:
            ids = [f"img-{i}" for i in range(len(items))]
            labels = _send_images(triton.http_url, "digits", items, ids)
            bad = _send_images(triton.http_url, "digits", [b"not an image"], ["bad-0"])
            deadline = time.monotonic() + 30
            while len(monitor.windows) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            monitor.wait()
            with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
                metrics = response.read().decode()
    assert set(labels) <= set(shared.labels), labels
    assert bad[0].startswith("error: input 'image': cannot decode image"), bad
    assert sum(len(w.records) for w in monitor.windows) == 24  # the bad image is answered with an error, not sampled
    assert 'transferkit_items_total{model="digits"} 24' in metrics
    # What was sampled at serving is what the baseline graph computes offline for the same images.
    records = {r.request_id: r for w in monitor.windows for r in w.records}
    offline = ServedGraph(export).run(items[:6])
    for i in range(6):
        served = records[ids[i]]
        np.testing.assert_allclose(served.embedding, offline["embeddings"][i], atol=1e-4)
        assert served.prediction == offline["predictions"][i] and labels[i] == shared.labels[served.prediction]
        for name in ("width", "height", "brightness"):
            assert served.features[name] == pytest.approx(offline[name][i], abs=1e-6)
    assert all(w.drift is not None for w in monitor.windows)


def test_image_deployment_without_monitoring_keeps_the_ensemble(tmp_path):
    from tests.unit.serve.image_export import shared_image_export

    bundle = build_model_repository(shared_image_export().export_dir, "digits", tmp_path / "repository",
                                    options=RepositoryOptions(instance_kind="cpu"))
    assert not (bundle.root / "digits" / "configs").exists()


def test_kserve_logged_triton_payloads_feed_the_monitor(tmp_path):
    """The bodies KServe's agent logs are Triton's own: real request/response bytes, JSON and binary-data."""
    import tritonclient.http as httpclient

    from transferkit.monitor.events import CE_REQUEST, CE_RESPONSE, EventIngester

    export = tmp_path / "export"
    shutil.copytree(shared_export(), export)
    write_baseline(export, write_movie_slice(tmp_path / "data", train=8, validation=40, test=8), size=40)
    bundle = build_model_repository(export, NAME, tmp_path / "repository",
                                    options=RepositoryOptions(instance_kind="cpu"))
    texts = ["A gripping, beautifully acted film.", "Dull, overlong and forgettable.", "not bad"]
    calls = []
    with LocalTriton(bundle.root, models=[NAME], exit_timeout=3) as triton:
        url = f"{triton.http_url}/v2/models/{NAME}/infer"

        def call(body, headers):
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()

        plain = json.dumps({"id": "json-1", "parameters": {"group": "g"}, "inputs": [
            {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": texts[:2]}]}).encode()
        calls.append(("ce-json", plain, call(plain, {"Content-Type": "application/json"}), "application/json"))
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[texts[2].encode()]], dtype=object), binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "label")]
        binary, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs, request_id="")
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
        calls.append(("ce-bin", binary, call(binary, headers), "application/octet-stream"))
    monitor = Monitor(load_baseline(export), DriftConfig(window_size=10), tmp_path / "reports", model=NAME)
    graph = ServedGraph(export)
    ingester = EventIngester(monitor, graph)
    added = 0
    for event_id, request, response, content_type in calls:
        for kind, body in ((CE_REQUEST, request), (CE_RESPONSE, response)):
            headers = {"ce-id": event_id, "ce-type": kind, "ce-specversion": "1.0", "ce-source": "http://x/",
                       "content-type": content_type}
            added += ingester.accept(headers, body)["records"]
    assert added == 3
    records = {r.request_id: r for r in monitor._open}
    assert sorted(records) == ["ce-bin", "json-1-0", "json-1-1"]
    offline = graph.run(texts)
    for i, key in enumerate(["json-1-0", "json-1-1", "ce-bin"]):
        np.testing.assert_allclose(records[key].embedding, offline["embeddings"][i], atol=1e-4)
        assert records[key].prediction == offline["predictions"][i]
        assert records[key].confidence == pytest.approx(offline["confidences"][i], abs=1e-4)
    assert records["json-1-0"].group == "g" and records["ce-bin"].group is None
