"""Fast checks of configs and helpers (no servers)."""

import time

import pytest
import yaml

from transferkit.errors import AuthError, ConfigError, ServerUnavailableError, ServingError
from transferkit.serve.control import read_api_key, split_url
from transferkit.serve.deploy import DeployConfig, DeployResult
from transferkit.serve.gitops import update_values_file
from transferkit.serve.install import TritonInstall, find_triton
from transferkit.serve.kserve import _is_ready, check_dns_label
from transferkit.serve.loadgen import LoadConfig, counter_delta, read_batch_counters, run_load, stats_breakdown
from transferkit.serve.local import LocalTriton, free_port


def test_api_key_from_secret_file_wins_over_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TK_KEY", "from-env")
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    assert read_api_key("TK_KEY", secret) == "from-file"
    assert read_api_key("TK_KEY") == "from-env"
    assert read_api_key("TK_UNSET_VAR") is None
    secret.write_text("  \n")
    with pytest.raises(AuthError, match="empty"):
        read_api_key("TK_KEY", secret)
    with pytest.raises(AuthError, match="cannot read"):
        read_api_key("TK_KEY", tmp_path / "missing")


def test_split_url():
    assert split_url("http://127.0.0.1:8000") == ("127.0.0.1:8000", False)
    assert split_url("https://triton.example:443/") == ("triton.example:443", True)
    assert split_url("127.0.0.1:8000") == ("127.0.0.1:8000", False)
    with pytest.raises(ConfigError, match="triton_url"):
        split_url("grpc://x:1")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mode": "blue-green"}, "mode"),
    ({"repository": ""}, "repository"),
    ({"triton_url": None}, "triton_url"),
    ({"keep_versions": 0}, "keep_versions"),
    ({"smoke_texts": []}, "smoke_texts"),
    ({"smoke_expected_labels": ["positive"]}, "smoke_expected_labels"),
    ({"smoke_tolerance": 0}, "smoke_tolerance"),
    ({"name": "x/y"}, "name"),
    ({"mode": "kserve", "name": "Upper_Case"}, "name"),
    ({"mode": "kserve", "repository": "/mnt/models"}, "storage_uri"),
])
def test_deploy_config_validation(kwargs, field, tmp_path):
    base = {"onnx_dir": tmp_path, "name": "m", "repository": str(tmp_path), "triton_url": "http://127.0.0.1:1"}
    with pytest.raises(ConfigError, match=field):
        DeployConfig(**(base | kwargs))


def test_deploy_result_markdown():
    result = DeployResult("m", 3, 2, "triton", "http://h/v2/models/m/infer", "/repo", ["m_onnx", "m"],
                          smoke_test={"passed": True, "max_abs_diff": 0.001}, retired_versions=[1])
    text = result.to_markdown()
    assert text.startswith("# Deployment of `m` version 3")
    assert "| previous version | 2 |" in text and "passed" in text
    assert result.to_dict()["models"] == ["m_onnx", "m"]


def test_values_file_update_keeps_other_keys(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("image:\n  tag: 1.0\nserving:\n  replicas: 2\n")
    assert update_values_file(values, "serving.model", {"version": 4, "repositoryUri": "s3://b/p"})
    assert yaml.safe_load(values.read_text()) == {
        "image": {"tag": 1.0}, "serving": {"replicas": 2, "model": {"version": 4, "repositoryUri": "s3://b/p"}}}
    assert not update_values_file(values, "serving.model", {"version": 4})
    with pytest.raises(ConfigError, match="not a mapping"):
        update_values_file(values, "serving.replicas.x", {"version": 5})


def test_kserve_readiness_follows_generations():
    ready = {"type": "Ready", "status": "True"}
    assert _is_ready({"status": {"conditions": [ready]}})
    assert not _is_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert not _is_ready({"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "conditions": [ready]}})
    assert _is_ready({"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "conditions": [ready]}})
    assert not _is_ready({"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "conditions": [ready]}},
                         min_generation=4)
    assert check_dns_label("sentiment-v2", "name") == "sentiment-v2"
    with pytest.raises(ConfigError):
        check_dns_label("Sentiment_v2", "name")


def test_load_config_is_bounded_and_loopback_only():
    assert LoadConfig(http_url="http://localhost:8000", model="m").concurrency == (1, 4, 16)
    with pytest.raises(ConfigError, match="not a loopback address"):
        LoadConfig(http_url="http://10.0.0.5:8000", model="m")
    with pytest.raises(ConfigError, match="bounded"):
        LoadConfig(http_url="http://127.0.0.1:8000", model="m", requests=0)
    with pytest.raises(ConfigError, match="grpc_url"):
        LoadConfig(http_url="http://127.0.0.1:8000", model="m", protocols=("grpc",))
    with pytest.raises(ConfigError, match="concurrency"):
        LoadConfig(http_url="http://127.0.0.1:8000", model="m", concurrency=(0,))
    assert read_batch_counters("http://127.0.0.1:9/metrics", "m") is None


def test_missing_install_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_TRITON_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(ServingError, match="make setup"):
        find_triton()
    install = TritonInstall(tmp_path)
    env = install.environment({"PATH": "/usr/bin", "PYTHONPATH": "/x", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(":")[0] == str(tmp_path / "serving-venv" / "bin")
    assert env["LD_LIBRARY_PATH"].split(":") == [str(tmp_path / "nvidia_pytriton.libs"), "/opt/lib"]
    assert "PYTHONPATH" not in env


def test_restricted_key_is_redacted_from_the_logged_command(tmp_path):
    installed = TritonInstall(tmp_path)
    server = LocalTriton(tmp_path, restricted_api_key="super-secret", install=installed, models=["m"])
    command = " ".join(server.command())
    assert "super-secret" not in command and "triton-model-control-key=***" in command
    assert "--model-control-mode=explicit" in command and "--model-config-name=local" in command
    assert "--http-address=127.0.0.1" in command and "--load-model=m" in command
    with pytest.raises(ConfigError):
        LocalTriton(tmp_path, models=["../m"], install=installed)


def test_deploy_export_errors_are_serving_errors(tmp_path):
    from transferkit.serve.deploy import deploy_model

    config = DeployConfig(onnx_dir=tmp_path, name="m", repository=str(tmp_path / "repo"),
                          triton_url="http://127.0.0.1:1")
    with pytest.raises(ServingError, match=r"io_spec.json: missing"):
        deploy_model(config)
    assert not (tmp_path / "repo").exists()


def test_counter_delta_ignores_a_version_unloaded_between_reads():
    before = {"1": (7.0, 6.0), "2": (2.0, 1.0)}
    after = {"2": (50.0, 49.0), "3": (4.0, 2.0)}
    assert counter_delta(before, after) == (52.0, 50.0)


def test_stats_breakdown_is_per_request_and_per_model_over_versions():
    def phases(count, ms):
        return {p: (count, int(ms * count * 1e6)) for p in
                ("success", "queue", "compute_input", "compute_infer", "compute_output")}

    before = {("m", "1"): phases(10, 2.0), ("m_onnx", "1"): phases(10, 1.0), ("idle", "1"): phases(5, 1.0)}
    after = {("m", "1"): phases(30, 2.0), ("m", "2"): phases(10, 8.0), ("m_onnx", "1"): phases(10, 1.0),
             ("idle", "1"): phases(5, 1.0)}
    # m: 20 more requests at 2 ms on version 1 and 10 new ones at 8 ms on version 2 -> 30 at 4 ms.
    assert stats_breakdown(before, after) == {"m": {"requests": 30, "success_ms": 4.0, "queue_ms": 4.0,
                                                    "compute_input_ms": 4.0, "compute_infer_ms": 4.0,
                                                    "compute_output_ms": 4.0}}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_against_a_closed_port_fails_at_warm_up(protocol):
    port = free_port()
    config = LoadConfig(http_url=f"http://127.0.0.1:{port}", grpc_url=f"127.0.0.1:{port}", model="m",
                        protocols=(protocol,), concurrency=(4,), requests=8, duration_s=5, timeout_s=5)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="warm-up failed"):
        run_load(config)
    assert time.monotonic() - started < 10  # the workers do not wait out the readiness barrier
