"""Image classification on the real local Triton: deploy, tritonclient (HTTP, gRPC), plain HTTP, curl, bad images.

One server and one digits export (EfficientNet-Lite0 at 32x32, new head) for the whole module. Served labels
and logits are compared with ONNX Runtime run in-process after transferkit's reference ImagePreprocessor.
"""

import base64
import json
import queue
import shlex
import struct
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.unit.serve.image_export import shared_image_export
from transferkit.cli.main import app
from transferkit.data.prepared import load_prepared
from transferkit.serve.control import TritonControl
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.local import SHM_DIR, LocalTriton
from transferkit.serve.repository import RepositoryOptions, load_export
from transferkit.serve.smoke import reference_image_logits

pytestmark = pytest.mark.integration

NAME = "digits"
OUTPUTS = ("logits", "probabilities", "label")


@pytest.fixture(scope="module")
def image_export():
    return shared_image_export()


@pytest.fixture(scope="module")
def test_images(image_export):
    data = load_prepared(image_export.data_dir)
    return data.images("test")[:24]


@pytest.fixture(scope="module")
def expected(image_export, test_images):
    logits = reference_image_logits(load_export(image_export.export_dir), test_images)
    return logits, [image_export.labels[i] for i in logits.argmax(axis=1)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton-image") / "repository"
    repo.mkdir()
    with LocalTriton(repo, exit_timeout=3) as triton:
        yield triton
        regions = triton.shm_regions()
    assert not triton.running()
    assert [r for r in regions if (SHM_DIR / r).exists()] == []


@pytest.fixture(scope="module")
def deployed(image_export, server):
    config = DeployConfig(onnx_dir=image_export.export_dir, name=NAME, repository=str(server.repository),
                          triton_url=server.http_url, api_key_env=None, smoke_data=image_export.data_dir,
                          options=RepositoryOptions(instance_kind="cpu"))
    return deploy_model(config)


def server_graph_size(deployed):
    return (Path(deployed.repository_uri) / f"{NAME}_onnx" / str(deployed.version) / "model.onnx").stat().st_size


def test_deploy_smoke_tests_real_test_split_images(deployed, image_export):
    assert deployed.models == ["digits_preprocess", "digits_onnx", "digits_postprocess", "digits"]
    smoke = deployed.smoke_test
    assert smoke["passed"], smoke["reason"]
    assert smoke["inputs"] == 4  # real test-split images, one per label
    assert smoke["max_abs_diff"] < 1e-3  # the recommended static-QDQ graph does not depend on the batch
    assert smoke["labels"] == smoke["expected_labels"]
    served = load_export(image_export.export_dir)
    assert (server_graph_size(deployed) == served.onnx_path.stat().st_size)


def test_tritonclient_http_batch_matches_onnxruntime(deployed, server, test_images, expected):
    logits, labels = expected
    with TritonControl(server.http_url) as control:
        served = control.infer_images(NAME, test_images)
    assert [v.decode() for v in served["label"].reshape(-1)] == labels
    np.testing.assert_allclose(served["logits"], logits, atol=1e-3)
    np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_tritonclient_grpc_concurrent_requests_match_onnxruntime(deployed, server, test_images, expected):
    import tritonclient.grpc as grpcclient

    logits, labels = expected
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for index, png in enumerate(test_images):  # one image per request: the dynamic batcher groups them
            tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[png]], dtype=object))
            client.async_infer(NAME, [tensor], partial_callback(results, index),
                               outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS])
        answers = dict(results.get(timeout=60) for _ in test_images)
    finally:
        client.close()
    errors = {i: e for i, (_, e) in answers.items() if e is not None}
    assert errors == {}
    served_labels = [answers[i][0].as_numpy("label")[0, 0].decode() for i in range(len(test_images))]
    served_logits = np.concatenate([answers[i][0].as_numpy("logits") for i in range(len(test_images))])
    assert served_labels == labels
    np.testing.assert_allclose(served_logits, logits, atol=1e-3)


def partial_callback(results, index):
    return lambda result, error: results.put((index, (result, error)))


def _binary_request(url, images, outputs=("label", "probabilities")):
    """The KServe v2 binary-data extension by hand: JSON header, then each BYTES element length-prefixed."""
    payload = b"".join(struct.pack("<I", len(png)) + png for png in images)
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [len(images), 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)}}],
        "outputs": [{"name": name} for name in outputs],
    }).encode()
    request = urllib.request.Request(url, data=header + payload, method="POST", headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    with urllib.request.urlopen(request, timeout=60) as response:
        return {o["name"]: o for o in json.loads(response.read())["outputs"]}


def test_plain_http_binary_data_extension(deployed, test_images, expected):
    _, labels = expected
    outputs = _binary_request(deployed.endpoint, test_images[:5])
    assert outputs["label"]["data"] == labels[:5]
    assert outputs["label"]["shape"] == [5, 1]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


CURL_BINARY = r"""
IMG={png}
N=$(stat -c%s "$IMG")
HDR='{{"inputs":[{{"name":"image","shape":[1,1],"datatype":"BYTES","parameters":{{"binary_data_size":'$((N+4))'}}}}],"outputs":[{{"name":"label"}},{{"name":"probabilities"}}]}}'
LEN=$(printf '\\%03o' $((N&255)) $((N>>8&255)) $((N>>16&255)) $((N>>24&255)))
{{ printf '%s' "$HDR"; printf "$LEN"; cat "$IMG"; }} |
  curl -s --fail-with-body -X POST {endpoint} \
    -H "Inference-Header-Content-Length: ${{#HDR}}" -H 'Content-Type: application/octet-stream' --data-binary @-
"""

CURL_BASE64 = r"""
curl -s --fail-with-body -X POST {endpoint} -H 'Content-Type: application/json' \
  -d '{{"inputs":[{{"name":"image","shape":[1,1],"datatype":"BYTES","data":["'"$(base64 -w0 {png})"'"]}}]}}'
"""


@pytest.mark.parametrize("template", [CURL_BINARY, CURL_BASE64], ids=["binary", "base64-json"])
def test_curl_commands_from_the_docs(deployed, test_images, expected, tmp_path, template):
    png = tmp_path / "digit.png"
    png.write_bytes(test_images[3])
    script = template.format(png=shlex.quote(str(png)), endpoint=deployed.endpoint)
    result = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = {o["name"]: o["data"] for o in json.loads(result.stdout)["outputs"]}
    assert outputs["label"] == [expected[1][3]]


def _post(url, body, content_type="application/json", headers=None):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_corrupt_image_is_a_clean_error_while_others_are_served(deployed, server, test_images, expected):
    _, labels = expected
    corrupt = test_images[0][:40]  # a truncated PNG: valid signature, no image data
    bodies = {}
    for index, data in enumerate([*test_images[:8], corrupt, b"GIF89a garbage"]):
        bodies[index] = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                                "data": [base64.b64encode(data).decode()]}],
                                    "outputs": [{"name": "label"}]}).encode()
    answers = {}

    def send(index):
        answers[index] = _post(deployed.endpoint, bodies[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index in range(8):
        status, payload = answers[index]
        assert status == 200, payload
        assert payload["outputs"][0]["data"] == [labels[index]]
    for index in (8, 9):
        status, payload = answers[index]
        assert status == 400, payload
        assert payload["error"].startswith("in ensemble 'digits', input 'image': cannot decode image ("), payload
        assert "\n" not in payload["error"]
    # A request with several images names the bad one; the server is still healthy afterwards.
    with pytest.raises(urllib.error.HTTPError) as info:
        _binary_request(deployed.endpoint, [test_images[0], b"\x89PNG\r\n\x1a\n broken", test_images[1]])
    assert info.value.code == 400
    assert "input 'image[1]': cannot decode image" in json.loads(info.value.read())["error"]
    with TritonControl(server.http_url) as control:
        assert control.is_ready(NAME) and control.is_ready(f"{NAME}_preprocess")
        again = control.infer_images(NAME, test_images[:3])
    assert [v.decode() for v in again["label"].reshape(-1)] == labels[:3]


def test_cli_deploy_of_an_image_export(deployed, image_export, server, tmp_path):
    result = CliRunner().invoke(app, [
        "deploy", "--onnx", str(image_export.export_dir), "--name", NAME, "--mode", "triton",
        "--repository", str(server.repository), "--triton-url", server.http_url, "--api-key-env", "",
        "--instance-kind", "cpu", "--output", str(tmp_path / "record.json"),
        "--smoke-data", str(image_export.data_dir), "--smoke-count", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["version"] == deployed.version + 1 and record["previous_version"] == deployed.version
    assert record["smoke_test"]["passed"] and record["smoke_test"]["inputs"] == 3  # test-split images
    with TritonControl(server.http_url) as control:
        assert control.ready_versions(NAME) == [record["version"]]


def test_load_generator_sends_images(deployed, server, test_images):
    from transferkit.serve.loadgen import LoadConfig, run_load

    result = run_load(LoadConfig(http_url=server.http_url, grpc_url=server.grpc_url, metrics_url=server.metrics_url,
                                 model=NAME, protocols=("http", "grpc"), concurrency=(1, 8), requests=32,
                                 duration_s=60, images=tuple(test_images)))
    assert result.total_errors == 0
    for level in result.levels:
        assert level.requests == 32 and level.throughput_rps > 0
        assert level.server_avg_batch_size is not None and level.server_avg_batch_size >= 1.0


def test_bench_serve_cli_sends_dataset_images(deployed, server, image_export, tmp_path):
    result = CliRunner().invoke(app, [
        "bench", "serve", "--model", NAME, "--http-url", server.http_url, "--grpc-url", server.grpc_url,
        "--metrics-url", server.metrics_url, "--protocol", "http", "--concurrency", "2", "--requests", "8",
        "--images", str(image_export.data_dir), "--output", str(tmp_path / "load.json")])
    assert result.exit_code == 0, result.output
    load = json.loads((tmp_path / "load.json").read_text())
    assert load["total_errors"] == 0 and load["levels"][0]["requests"] == 8
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(app, ["bench", "serve", "--model", NAME, "--images", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "no images found" in empty.output
