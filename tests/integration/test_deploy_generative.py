"""`transferkit deploy` of a generative export: triton mode against the real local Triton (smoke test, hot swap,
rollback), gitops and kserve modes. One tiny random Llama, fine-tuned for three steps and exported (fp32 + int4)."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.generative import tiny_generative_export
from transferkit.errors import DeploymentError, ServingError
from transferkit.serve.control import TritonControl
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.generative import generate, stream_generate
from transferkit.serve.local import LocalTriton
from transferkit.serve.repository import RepositoryOptions

pytestmark = pytest.mark.integration

KEY_ENV = "TK_TEST_GEN_TRITON_KEY"
KEY = "generative-control-key-42"
NAME = "summarizer"
TEXT = "We propose a new parser for long documents and evaluate it on three benchmarks."
CPU = RepositoryOptions(instance_kind="cpu", local_threads=1, generation_concurrency=2)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    root = tmp_path_factory.mktemp("generative-deploy")
    _, export = tiny_generative_export(root)
    return export


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("triton") / "repository"
    repo.mkdir()
    with LocalTriton(repo, restricted_api_key=KEY, exit_timeout=3) as triton:
        yield triton
    assert not triton.running()


@pytest.fixture(scope="module")
def key_env():
    import os

    os.environ[KEY_ENV] = KEY
    yield KEY_ENV
    os.environ.pop(KEY_ENV, None)


def _config(export_dir: Path, server: LocalTriton, **kwargs) -> DeployConfig:
    kwargs.setdefault("smoke_texts", [TEXT])
    return DeployConfig(onnx_dir=export_dir, name=NAME, repository=str(server.repository), triton_url=server.http_url,
                        api_key_env=KEY_ENV, options=CPU, keep_versions=2, **kwargs)


def _versions(server: LocalTriton) -> list[int]:
    return sorted(int(p.name) for p in (server.repository / NAME).iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def first_deploy(export_dir: Path, server: LocalTriton, key_env: str, tmp_path_factory: pytest.TempPathFactory):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    out = tmp_path_factory.mktemp("record") / "deploy.json"
    result = CliRunner().invoke(app, ["deploy", "--onnx", str(export_dir), "--name", NAME, "--repository",
                                      str(server.repository), "--triton-url", server.http_url, "--api-key-env",
                                      key_env, "--instance-kind", "cpu", "--generation-concurrency", "2",
                                      "--keep", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_cli_deploy_publishes_smoke_tests_and_serves(first_deploy: dict, server: LocalTriton) -> None:
    assert first_deploy["version"] == 1 and first_deploy["previous_version"] is None
    assert first_deploy["models"] == [NAME]
    assert first_deploy["endpoint"] == f"{server.http_url}/v2/models/{NAME}/generate"
    smoke = first_deploy["smoke_test"]
    assert smoke["passed"] is True and smoke["inputs"] == 4  # the default smoke sentences as prompts
    assert all(t.strip() for t in smoke["texts"]) and min(smoke["stream_pieces"]) >= 2
    model = server.repository / NAME
    assert "KIND_CPU" in (model / "config.pbtxt").read_text()  # --instance-kind cpu: a CPU production config
    assert 'string_value: "2"' in (model / "config.pbtxt").read_text()
    assert json.loads((model / "1" / "generation_spec.json").read_text())["served_variant"] == "int4"
    assert generate(server.http_url, NAME, TEXT, max_tokens=6).strip()
    assert "".join(p.text for p in stream_generate(server.http_url, NAME, TEXT, max_tokens=6)).strip()


def test_helm_test_script_of_the_generative_chart_passes(first_deploy: dict, server: LocalTriton) -> None:
    """The chart's `helm test` hook, rendered with generative values, against the served generative model.

    Runs before the rollback tests: after a version fails to load, Triton 2.51 keeps it in its index as UNAVAILABLE
    and --strict-readiness reports the server not ready although the previous version serves (the chart's
    readiness probe therefore asks the served model's own ready endpoint).
    """
    import os
    import shutil

    helm = pytest.importorskip("helm_python")
    if shutil.which("curl") is None:
        pytest.skip("the helm test script needs curl")
    from tests.integration.test_helm_chart import CHART, by_kind, render

    chart = helm.Chart.load(str(CHART))
    try:
        docs = render(chart, {"models": [NAME], "gpu": {"count": 0}, "generative": {"enabled": True}})
    finally:
        chart.close()
    container = by_kind(docs, "Pod")[0]["spec"]["containers"][0]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env["TRITON_URL"] = server.http_url  # the in-cluster Service name does not resolve here
    passed = subprocess.run(["sh", "-c", container["args"][0]], env=env, capture_output=True, text=True, timeout=180)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "OK: summarizer generated" in passed.stdout and '"text_output":"' in passed.stdout
    # The same hook fails on a model that does not generate (a request it refuses).
    refused = subprocess.run(["sh", "-c", container["args"][0]],
                             env={**env, "REQUEST": json.dumps({"text_input": TEXT, "max_tokens": 0})},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


def test_hot_swap_while_streaming_has_zero_failures(first_deploy: dict, export_dir: Path, server: LocalTriton) -> None:
    errors: list[str] = []
    done = threading.Event()
    served = [0]

    def client() -> None:
        while not done.is_set():
            try:
                text = "".join(p.text for p in stream_generate(server.http_url, NAME, TEXT, max_tokens=6))
                assert text.strip()
                served[0] += 1
            except (ServingError, OSError, AssertionError) as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        result = deploy_model(_config(export_dir, server))
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert result.version == first_deploy["version"] + 1 and result.previous_version == first_deploy["version"]
    assert result.smoke_test["passed"]
    assert errors == [] and served[0] > 0
    with TritonControl(server.http_url, api_key=KEY) as control:
        assert control.ready_versions(NAME) == [result.version]


def test_failed_generative_smoke_test_rolls_back(first_deploy: dict, export_dir: Path, server: LocalTriton) -> None:
    serving = max(_versions(server))
    too_long = " ".join(["parsing"] * 300)  # the new version refuses it: the smoke test fails
    with pytest.raises(DeploymentError, match=rf"version {serving + 1} not deployed: smoke test failed: HTTP 400: .*"
                                              rf"exceeds the model's context.*rolled back \(version {serving} still "
                                              rf"serving\)"):
        deploy_model(_config(export_dir, server, smoke_texts=[too_long]))
    assert max(_versions(server)) == serving
    with TritonControl(server.http_url, api_key=KEY) as control:
        assert control.ready_versions(NAME) == [serving]
    assert generate(server.http_url, NAME, TEXT, max_tokens=4).strip()
    record = json.loads((server.repository / NAME / "DEPLOYMENT.json").read_text())
    assert record["history"][-1]["status"] == "rolled_back" and record["high_water_version"] == serving + 1


def test_version_that_fails_to_load_rolls_back(first_deploy: dict, export_dir: Path, server: LocalTriton,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferkit.serve import generative

    (tmp_path / generative.MODEL_FILE).write_text("raise RuntimeError('simulated generator load failure')\n")
    monkeypatch.setattr(generative, "resources", SimpleNamespace(files=lambda package: tmp_path))
    serving = max(_versions(server))
    with pytest.raises(DeploymentError, match=rf"load '{NAME}' failed.*simulated generator load failure.*"
                                              rf"rolled back \(version {serving} still serving\)"):
        deploy_model(_config(export_dir, server))
    assert max(_versions(server)) == serving
    assert generate(server.http_url, NAME, TEXT, max_tokens=4).strip()


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_gitops_mode_commits_the_generative_version(export_dir: Path, tmp_path: Path) -> None:
    import yaml

    clone = tmp_path / "config"
    clone.mkdir()
    _git(clone, "init", "-b", "main")
    (clone / "values.yaml").write_text("replicas: 1\n")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-m", "initial")
    repo = tmp_path / "repository"
    result = deploy_model(DeployConfig(onnx_dir=export_dir, name=NAME, mode="gitops", repository=str(repo),
                                       storage_uri="s3://models/gen", git_repo=clone, values_file="values.yaml",
                                       options=RepositoryOptions(variant="fp32")))
    assert result.version == 1 and result.models == [NAME] and result.git_commit
    assert yaml.safe_load((clone / "values.yaml").read_text())["model"] == {
        "name": NAME, "version": 1, "repositoryUri": "s3://models/gen"}
    assert json.loads((repo / NAME / "1" / "generation_spec.json").read_text())["served_variant"] == "fp32"
    assert (repo / NAME / "1" / "model" / "genai_config.json").is_file()
    assert "KIND_GPU" in (repo / NAME / "config.pbtxt").read_text()


def test_kserve_mode_points_clients_at_generate(export_dir: Path, tmp_path: Path) -> None:
    from tests.integration.test_deploy_modes import FakeController
    from tests.unit.serve.servers import KubeAPI

    with KubeAPI() as kube:
        controller = FakeController(kube)  # plays KServe: marks InferenceService ml/sentiment Ready
        controller.start()
        try:
            result = deploy_model(DeployConfig(
                onnx_dir=export_dir, name=NAME, mode="kserve", repository=str(tmp_path / "repo"),
                storage_uri="pvc://models/repo", namespace="ml", isvc_name="sentiment", kube_api_url=kube.url,
                ready_poll_s=0.3, ready_timeout_s=5, attempts=2))
        finally:
            controller.stop.set()
            controller.join(5)
    assert result.endpoint == f"http://sentiment.ml.example.com/v2/models/{NAME}/generate"
    assert result.inference_service == "ml/sentiment" and (tmp_path / "repo" / NAME / "1" / "model.py").is_file()


def test_variant_missing_from_the_export_is_refused_before_publishing(export_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "git" / ".git").mkdir(parents=True)
    with pytest.raises(ServingError, match=r"generation_spec.json: variant 'fp16' not among \['fp32', 'int4'\]"):
        deploy_model(DeployConfig(onnx_dir=export_dir, name=NAME, mode="gitops", repository=str(tmp_path / "r"),
                                  git_repo=tmp_path / "git", options=RepositoryOptions(variant="fp16")))
    assert not (tmp_path / "r" / NAME).exists()



def test_pipeline_deploy_component_serves_the_chosen_generative_variant(export_dir: Path, server: LocalTriton,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's deploy_triton step (its Python function, as kfp.local runs it) on a generative export."""
    from kfp.dsl import Artifact, Markdown, Model

    from components.deploy_triton.component import deploy_triton

    monkeypatch.setenv("TRANSFERKIT_TRITON_API_KEY", KEY)  # the component reads the key from the environment only
    name = "pipeline-summarizer"
    deployment = Artifact(uri=str(tmp_path / "deployment.json"))
    version, endpoint = deploy_triton.python_func(
        onnx_model=Model(uri=str(export_dir)), deployment=deployment, record=Markdown(uri=str(tmp_path / "r.md")),
        model_name=name, repository=str(server.repository), triton_url=server.http_url, instance_kind="cpu",
        min_agreement=0.9, variant="fp32", generation_concurrency=3, local_threads=1)
    assert version == 1 and endpoint == f"{server.http_url}/v2/models/{name}/generate"
    record = json.loads((tmp_path / "deployment.json").read_text())
    assert record["smoke_test"]["passed"] is True and record["agreement"] is None  # min_agreement: classifiers only
    model = server.repository / name
    assert json.loads((model / "1" / "generation_spec.json").read_text())["served_variant"] == "fp32"
    assert 'string_value: "3"' in (model / "configs" / "local.pbtxt").read_text()
    genai = json.loads((model / "1" / "model" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert "".join(p.text for p in stream_generate(server.http_url, name, TEXT, max_tokens=6)).strip()
