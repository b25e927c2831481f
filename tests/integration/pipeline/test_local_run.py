"""The whole pipeline under kfp.local on a small slice, ending with a real Triton answer."""

import pytest
import yaml
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.errors import PipelineError

pytestmark = pytest.mark.integration
runner = CliRunner()

SMALL = {
    "max_rows": 400, "max_steps": 4, "batch_size": 16, "max_length": 48, "min_primary": 0.0,
    "forgetting_min_retention": 0.0, "preserve_source": False, "model_name": "movies",
}


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline-run")


def _run(repo_root, work_dir, **params):
    from pipelines.transfer_learning.local_run import run_local

    return run_local({**SMALL, **params}, package=repo_root / "pipelines/transfer_learning/pipeline.yaml",
                     work_dir=work_dir)


def test_local_run_deploys_and_triton_answers(repo_root, work_dir):
    result = _run(repo_root, work_dir)
    assert result.status == "SUCCESS"
    ran = set(result.tasks)
    assert {"data-prep", "fine-tune", "forgetting-check", "evaluate", "onnx-quantize", "deploy-gate",
            "deploy-triton", "run-summary"} <= ran
    assert result.outputs["deploy-gate"]["Output"] is True
    assert result.outputs["prune-model"]["pruned"] is False  # off by default: the fine-tuned model passes through
    assert result.outputs["onnx-quantize"]["recommended_variant"] in {"int8", "fp32"}
    assert result.outputs["deploy-triton"]["version"] >= 1
    assert result.sample["label"] in {"negative", "positive"}
    assert abs(sum(result.sample["probabilities"]) - 1.0) < 1e-3
    assert result.outputs["evaluate"]["classification_metrics"]["confusionMatrix"]["annotationSpecs"]


@pytest.mark.timeout(2400)  # alone (without the first test's cache) it runs the whole pipeline on shared cores
def test_serve_runs_the_monitor_beside_triton_and_stops_both(repo_root, work_dir):
    """`pipeline run --local --serve`: served traffic is sampled to the monitor; stopping ends both servers."""
    import json
    import socket
    import threading
    import time
    import urllib.request

    from pipelines.transfer_learning.local_run import run_local
    from transferkit.monitor.replay import replay_triton

    stop, seen = threading.Event(), {}

    def on_serving(result):
        try:
            triton = result.endpoint.split("/v2/")[0]
            texts = ["A warm and funny film.", "Dull and far too long.", "The cast is wonderful.", "A mess."] * 5
            replay_triton(triton, result.model_name, texts, [f"serve-{i}" for i in range(len(texts))])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"{result.monitor_url}/metrics", timeout=10) as response:
                    metrics = response.read().decode()
                line = next(x for x in metrics.splitlines() if x.startswith("transferkit_monitor_records_total{"))
                if float(line.rsplit(" ", 1)[1]) >= len(texts) + 1:
                    break
                time.sleep(0.3)
            seen.update(records=float(line.rsplit(" ", 1)[1]), triton=triton)
        finally:
            stop.set()

    result = run_local({**SMALL}, package=repo_root / "pipelines/transfer_learning/pipeline.yaml",
                       work_dir=work_dir, serve_forever=True, on_serving=on_serving, stop=stop)
    assert result.monitor_url and result.outputs["deploy-triton"]["version"] >= 1
    # The run's sample answer and every request sent while serving reached the monitor (sample rate 1). The deploy's
    # own checks are sampled before the monitor is up: the sampler's background queue drops or delivers them
    # depending on timing, so only the lower bound is exact.
    assert seen["records"] >= 21
    config = (work_dir / "model_repository" / "movies" / "configs" / "local.pbtxt").read_text()
    assert json.dumps(result.monitor_url) in config and "monitor_sample_rate" in config
    for url in (result.monitor_url, seen["triton"]):
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as probe:
            assert probe.connect_ex((host, int(port))) != 0, f"{url} still listening after stop"


def test_failed_forgetting_gate_skips_deploy(repo_root, work_dir):
    # Same training inputs as above, so data prep and fine-tune come from the local cache.
    result = _run(repo_root, work_dir, forgetting_max_drop=1e-6)
    assert result.tasks["fine-tune"]["status"] == "CACHED", result.tasks
    assert result.outputs["forgetting-check"]["passed"] is False
    assert result.outputs["deploy-gate"]["Output"] is False
    assert not any(name.startswith("deploy-triton") for name in result.tasks)
    assert result.sample is None


def test_failing_step_names_the_task_and_the_cause(repo_root, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**SMALL, "dataset_uri": str(tmp_path / "missing.csv")}))
    result = runner.invoke(app, ["pipeline", "run", "--local", "--params", str(params),
                                 "--work-dir", str(tmp_path / "work")])
    # The command checks a local dataset path before anything starts (no server, no work dir) ...
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: pipeline parameter dataset_uri:") and "does not exist" in last, last
    assert not (tmp_path / "work").exists()
    # ... and a step that fails anyway (here: the library entry point, without that check) is named with its cause.
    with pytest.raises(PipelineError, match="data-prep"):
        _run(repo_root, tmp_path / "work2", dataset_uri=str(tmp_path / "missing.csv"))


def test_image_pipeline_deploys_and_triton_labels_a_png(repo_root, tmp_path):
    """task=image-classification: real digits, EfficientNet-Lite0 at 32 px, the same pipeline and Triton."""
    params = {"dataset_uri": "builtin:digits", "task": "image-classification", "base_model": "efficientnet-lite0",
              "max_rows": 0, "max_steps": 30, "batch_size": 32, "image_size": 32, "min_primary": 0.0,
              "forgetting_min_retention": 0.0, "max_quantization_drop": 100.0, "model_name": "digits"}
    from pipelines.transfer_learning.local_run import run_local

    result = run_local(params, package=repo_root / "pipelines/transfer_learning/pipeline.yaml",
                       work_dir=tmp_path / "work")
    assert result.status == "SUCCESS"
    assert result.outputs["forgetting-check"]["retention"] <= 1.0
    assert result.outputs["onnx-quantize"]["recommended_variant"] == "qdq"
    assert result.outputs["deploy-gate"]["Output"] is True
    sample = result.sample
    assert sample["label"] in [str(i) for i in range(10)]
    assert abs(sum(sample["probabilities"]) - 1.0) < 1e-3
    assert (tmp_path / "work" / "sample.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
