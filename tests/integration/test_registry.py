"""Model Registry: deploys to a real local Triton register their version through the official client
(kubeflow.hub.ModelRegistryClient) in a loopback STAND-IN of the Model Registry REST API
(tests/registry_standin.py, validated with the client's own OpenAPI models), as kmock stands in for Kubernetes."""

import json
import os

import pytest
from typer.testing import CliRunner

from tests.registry_standin import ModelRegistryStandIn
from tests.unit.serve.exported import shared_export
from transferkit.cli.main import app
from transferkit.errors import DeploymentError, RegistryError, ServerUnavailableError
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.local import LocalTriton
from transferkit.serve.registry import ModelRegistry, RegistryConfig
from transferkit.serve.repository import RepositoryOptions

pytestmark = pytest.mark.integration

KEY_ENV, KEY, NAME, TOKEN = "TK_TEST_REG_TRITON_KEY", "test-model-control-key-456", "movies", "registry-token-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repository"
    repo.mkdir()
    os.environ[KEY_ENV] = KEY
    with LocalTriton(repo, restricted_api_key=KEY, exit_timeout=3) as triton:
        yield triton
    os.environ.pop(KEY_ENV, None)


@pytest.fixture
def registry(tmp_path):
    with ModelRegistryStandIn(token=TOKEN) as standin:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        yield standin, RegistryConfig(url=standin.url, token_env=None, token_file=str(token_file))


def _summary(tmp_path):
    path = tmp_path / "training_summary.json"
    path.write_text(json.dumps({
        "strategy": "full", "model": {"reference": "minilm-l6", "path": "/models/minilm"},
        "data": {"dir": "/data/movies", "sha256": {"train": "ab12", "validation": "cd34"}},
        "best": {"metric": "accuracy", "value": 0.855},
    }))
    return path


def _export_with_gates(tmp_path):
    """The shared export (files linked, not copied) plus the export step's metrics.json with its gate results."""
    source, export_dir = shared_export(), tmp_path / "export"
    export_dir.mkdir()
    for entry in source.iterdir():
        (export_dir / entry.name).symlink_to(entry)
    (export_dir / "metrics.json").write_text(json.dumps({
        "target": "cpu", "passed": True, "parity_max_abs_diff": 3.2e-06, "int8_recipe": {"name": "portable"},
        "variants": {"fp32": {"accuracy": 0.84, "accuracy_drop_pt": 0.0, "kept": True},
                     "int8": {"accuracy": 0.835, "accuracy_drop_pt": 0.5, "kept": True}},
    }))
    return export_dir


def test_deploys_register_versions_and_a_rollback_archives_its_version(server, registry, tmp_path):
    standin, config = registry
    export_dir = _export_with_gates(tmp_path)
    common = {"onnx_dir": export_dir, "name": NAME, "repository": str(server.repository),
              "triton_url": server.http_url, "api_key_env": KEY_ENV, "keep_versions": 2, "registry": config,
              "options": RepositoryOptions(instance_kind="cpu"), "training_summary": _summary(tmp_path),
              "registry_metadata": {"kfp_run_id": "run-42", "dataset_uri": "builtin:movie-sentiment",
                                    "forgetting_retention": 0.52}}
    result = deploy_model(DeployConfig(**common))

    record = result.registry
    assert record["model"] == NAME and record["version"] == str(result.version)
    assert record["state"] == "LIVE" and record["status"] == "serving"
    assert record["artifact"] == {"uri": str(server.repository), "format": "onnx",
                                  "format_version": str(json.loads((export_dir / "io_spec.json").read_text())["opset"])}
    meta = record["metadata"]
    assert meta["kfp_run_id"] == "run-42" and meta["forgetting_retention"] == 0.52
    assert meta["base_model"] == "minilm-l6" and meta["strategy"] == "full"
    assert meta["dataset_sha256_train"] == "ab12" and meta["primary_metric_value"] == 0.855
    assert meta["variant"] == "fp32" and meta["target"] == "cpu" and meta["parity_passed"] is True
    assert meta["parity_max_abs_diff"] == 3.2e-06 and meta["accuracy"] == 0.84 and "int8_gate_passed" not in meta

    # A version the smoke test rejects is rolled back; the registry records it, archived, with the reason.
    with pytest.raises(DeploymentError, match="rolled back"):
        deploy_model(DeployConfig(**common, smoke_texts=["good"], smoke_expected_labels=["no-such-label"]))
    registry_view = ModelRegistry(config)
    failed = registry_view.show(NAME, str(result.version + 1))
    assert failed["state"] == "ARCHIVED" and failed["status"] == "rolled_back"
    assert "smoke" in failed["metadata"]["transferkit.reason"]
    # `registry show` without a version is the newest; `registry list` has both.
    assert registry_view.show(NAME)["version"] == str(result.version + 1)
    listed = registry_view.list_models()
    assert [(v["version"], v["status"]) for v in listed[0]["versions"]] == [
        (str(result.version), "serving"), (str(result.version + 1), "rolled_back")]
    # Every call went through the REST API of the stand-in with the bearer token.
    assert ("POST", "/api/model_registry/v1/model_versions") in standin.requests

    runner = CliRunner()
    base = ["--registry-url", standin.url, "--registry-token-file", config.token_file]
    shown = runner.invoke(app, ["registry", "show", NAME, str(result.version), *base])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["metadata"]["kfp_run_id"] == "run-42"
    listed_cli = runner.invoke(app, ["registry", "list", *base, "--json"])
    assert listed_cli.exit_code == 0 and json.loads(listed_cli.stdout)[0]["name"] == NAME
    # A manual rollback (e.g. a GitOps revert) marks the version by hand.
    marked = runner.invoke(app, ["registry", "mark", NAME, str(result.version), "--reason", "git revert", *base])
    assert marked.exit_code == 0, marked.output
    assert registry_view.show(NAME, str(result.version))["metadata"]["transferkit.reason"] == "git revert"
    assert registry_view.show(NAME, str(result.version))["state"] == "ARCHIVED"
    missing = runner.invoke(app, ["registry", "show", "nope", *base])
    assert missing.exit_code == 2 and "error: model registry" in missing.output


def test_registry_errors_are_one_typed_line(registry, tmp_path):
    standin, config = registry
    client = ModelRegistry(config)
    client.register("m", "1", "s3://b/r", format_version="17", description="d", metadata={"a": 1})
    with pytest.raises(RegistryError, match=r"registering m version 1 failed \(.*already exists"):
        client.register("m", "1", "s3://b/r", format_version="17", description="d", metadata={})
    with pytest.raises(RegistryError, match="credentials rejected while connecting"):
        ModelRegistry(RegistryConfig(url=standin.url, token_env="TK_NO_SUCH_VAR_SET"))
    standin.__exit__()
    with pytest.raises(ServerUnavailableError, match="unreachable while connecting"):
        ModelRegistry(config)
