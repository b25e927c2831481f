"""KServe payload-logger input: CloudEvents parsing, v2 payload decoding and the /v1/events endpoint."""

import base64
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.helpers import write_movie_slice
from tests.unit.serve.exported import shared_export
from transferkit.errors import MonitorError
from transferkit.monitor import DriftConfig, load_baseline, write_baseline
from transferkit.monitor.baseline import ServedGraph
from transferkit.monitor.events import (
    CE_REQUEST,
    CE_RESPONSE,
    EventIngester,
    decode_v2,
    parse_cloudevent,
    request_items,
    response_probabilities,
)
from transferkit.monitor.service import MonitorServer
from transferkit.monitor.state import Monitor

TEXTS = ["A gripping, beautifully acted film.", "Dull, overlong and forgettable.", "not bad"]


def _headers(event_id, kind, content_type="application/json"):
    """The binary-mode headers KServe's agent sends (cloudevents sdk-go, WithEncodingBinary)."""
    return {"Ce-Id": event_id, "Ce-Type": kind, "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:8080/",
            "Ce-Inferenceservicename": "sentiment", "Ce-Namespace": "ml", "Ce-Component": "predictor",
            "Ce-Endpoint": "default", "Ce-Metadata": "{}", "Content-Type": content_type}


def _request_body(texts, request_id="", binary=True, group=None):
    """A v2 request body exactly as tritonclient writes it (binary-data extension or JSON)."""
    tensor = httpclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object), binary_data=binary)
    body, _ = httpclient.InferenceServerClient.generate_request_body(
        [tensor], request_id=request_id, parameters={"group": group} if group else None)
    return body


def _response_body(probabilities, labels, binary=True):
    """A v2 response body as Triton writes it: JSON header, then the binary outputs in header order."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    outputs, tail = [], b""
    if binary:
        data = probabilities.astype("<f4").tobytes()
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape),
                        "parameters": {"binary_data_size": len(data)}})
        tail += data
        encoded = b"".join(len(x.encode()).to_bytes(4, "little") + x.encode() for x in labels)
        outputs.append({"name": "label", "datatype": "BYTES", "shape": [len(labels), 1],
                        "parameters": {"binary_data_size": len(encoded)}})
        tail += encoded
    else:
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape),
                        "data": probabilities.reshape(-1).tolist()})
        outputs.append({"name": "label", "datatype": "BYTES", "shape": [len(labels), 1], "data": labels})
    return json.dumps({"model_name": "sentiment", "model_version": "1", "outputs": outputs}).encode() + tail


def test_binary_and_structured_cloudevents_are_read():
    event = parse_cloudevent(_headers("abc", CE_REQUEST), b'{"inputs": []}')
    assert (event.id, event.type, event.inference_service, event.data) == ("abc", CE_REQUEST, "sentiment",
                                                                          b'{"inputs": []}')
    structured = json.dumps({"specversion": "1.0", "id": "x1", "type": CE_RESPONSE, "source": "s",
                             "datacontenttype": "application/json",
                             "data_base64": base64.b64encode(b'{"outputs": []}').decode()}).encode()
    event = parse_cloudevent({"Content-Type": "application/cloudevents+json"}, structured)
    assert (event.id, event.type, event.data) == ("x1", CE_RESPONSE, b'{"outputs": []}')
    with pytest.raises(MonitorError, match="^ce-type: missing; expected a CloudEvent from KServe's payload logger$"):
        parse_cloudevent({k: v for k, v in _headers("a", CE_REQUEST).items() if k != "Ce-Type"}, b"{}")
    with pytest.raises(MonitorError, match="^ce-type: 'dev.example.other' is not org.kubeflow.serving"):
        parse_cloudevent(_headers("a", "dev.example.other"), b"{}")


def test_v2_bodies_decode_in_json_and_binary_form():
    for binary in (True, False):
        items, request_id, group = request_items(_request_body(TEXTS, "req-7", binary=binary, group="g1"))
        assert [x.decode() if isinstance(x, bytes) else x for x in items] == TEXTS
        assert (request_id, group) == ("req-7", "g1")
        served = response_probabilities(_response_body([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]], ["p", "n", "p"],
                                                       binary=binary), 3, 2)
        np.testing.assert_allclose(served, [[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]], atol=1e-7)
    tensors, _ = decode_v2(_response_body([[0.5, 0.5]], ["positive"]), "outputs", "response")
    assert tensors["label"] == [b"positive"]
    with pytest.raises(MonitorError, match=r"^response.outputs \(probabilities\): 2 values for 3 items of 2 classes"):
        response_probabilities(_response_body([[0.5, 0.5]], ["p"]), 3, 2)
    with pytest.raises(MonitorError, match=r"^request: not an Open Inference Protocol \(KServe v2\) JSON body$"):
        request_items(b"\x89PNG not json")
    with pytest.raises(MonitorError, match=r"^request.inputs\[0\] \(text\): no data and no binary_data_size$"):
        request_items(b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES"}]}')
    truncated = _request_body(TEXTS)[:-5]
    with pytest.raises(MonitorError, match=r"^request.inputs\[0\] \(text\): binary_data_size 85 but 80 bytes left$"):
        request_items(truncated)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    export = root / "export"
    shutil.copytree(shared_export(), export)
    write_baseline(export, write_movie_slice(root / "data", train=8, validation=40, test=8), size=40)
    return export


def _post(url, headers, body):
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_logged_pairs_become_records_with_served_predictions(export, tmp_path):
    monitor = Monitor(load_baseline(export), DriftConfig(window_size=10, permutations=200), tmp_path / "reports",
                      model="sentiment")
    graph = ServedGraph(export)
    with MonitorServer(monitor, port=0, events=EventIngester(monitor, graph)) as server:
        url = f"{server.url}/v1/events"
        # Pair 1: request first, binary-data bodies, the client's request id in the body, a group parameter.
        served = [[0.1, 0.9], [0.7, 0.3], [0.45, 0.55]]
        assert _post(url, _headers("ce-1", CE_REQUEST), _request_body(TEXTS, "client-1", group="a")) == (
            200, {"event": "request", "records": 0})
        assert _post(url, _headers("ce-1", CE_RESPONSE), _response_body(served, ["p", "n", "p"])) == (
            200, {"event": "response", "records": 3})
        # Pair 2: the response arrives first (the agent's workers may reorder), JSON bodies, no body id.
        second = ["An awful mess.", *TEXTS, *TEXTS]
        rows = [[0.8, 0.2]] * len(second)
        assert _post(url, _headers("ce-2", CE_RESPONSE), _response_body(rows, ["n"] * 7, binary=False))[1] == {
            "event": "response", "records": 0}
        assert _post(url, _headers("ce-2", CE_REQUEST), _request_body(second, binary=False))[1] == {
            "event": "request", "records": 7}
        status, answer = _post(url, _headers("ce-3", "dev.example.other"), b"{}")
        assert status == 400 and answer["error"].startswith("ce-type: 'dev.example.other' is not")
        monitor.wait()
    records = {r.request_id: r for w in monitor.windows for r in w.records}
    assert sorted(records) == [*(f"ce-2-{i}" for i in range(7)), "client-1-0", "client-1-1", "client-1-2"]
    offline = graph.run([*TEXTS, "An awful mess."])
    for i, key in enumerate(["client-1-0", "client-1-1", "client-1-2", "ce-2-0"]):
        np.testing.assert_allclose(records[key].embedding, offline["embeddings"][i], atol=1e-5)
        assert records[key].features["length"] == offline["length"][i]
    # Prediction and confidence are what was served (read from the logged response), not recomputed.
    assert [records[f"client-1-{i}"].prediction for i in range(3)] == [1, 0, 1]
    assert records["client-1-1"].confidence == pytest.approx(0.7)
    assert records["ce-2-0"].prediction == 0 and records["ce-2-0"].confidence == pytest.approx(0.8)
    assert {records[f"client-1-{i}"].group for i in range(3)} == {"a"} and records["ce-2-0"].group is None
    assert len(monitor.windows) == 1 and monitor.windows[0].drift is not None


def test_events_need_the_export_graph_and_sampling_keeps_pairs_together(export, tmp_path):
    monitor = Monitor(load_baseline(export), DriftConfig(window_size=50), tmp_path / "reports", model="m")
    ingester = EventIngester(monitor, None)
    with pytest.raises(MonitorError, match=r"^events: the monitor needs the export directory \(--baseline EXPORT_DIR"):
        ingester.accept(_headers("a", CE_REQUEST), _request_body(TEXTS))
    sampled = EventIngester(monitor, ServedGraph(export), sample_rate=0.5)
    kept = [f"id-{i}" for i in range(200) if sampled.kept(f"id-{i}")]
    assert 70 < len(kept) < 130
    dropped = next(f"id-{i}" for i in range(200) if not sampled.kept(f"id-{i}"))
    assert sampled.accept(_headers(dropped, CE_REQUEST), _request_body(TEXTS[:1]))["records"] == 0
    assert sampled.accept(_headers(dropped, CE_RESPONSE), _response_body([[0.5, 0.5]], ["p"]))["records"] == 0
    assert sampled.accept(_headers(kept[0], CE_REQUEST), _request_body(TEXTS[:1]))["records"] == 0
    assert sampled.accept(_headers(kept[0], CE_RESPONSE), _response_body([[0.5, 0.5]], ["p"]))["records"] == 1
    with pytest.raises(MonitorError, match="event_sample_rate: expected a fraction in"):
        EventIngester(monitor, None, sample_rate=0.0)
