"""Deploy modes without a Triton: gitops (real bare git repository) and kserve (kmock API), publishing
to s3:// on a moto server. Every failure must leave nothing half-published."""

import json
import subprocess
import threading
import time
from pathlib import Path

import boto3
import jsonschema
import pytest
import yaml

from tests.unit.serve.exported import shared_export
from tests.unit.serve.servers import KubeAPI, moto_s3, s3_env
from transferkit.errors import AuthError, ConfigError, DeploymentError, ServerUnavailableError
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.kserve import GROUP, PLURAL, VERSION, VERSION_ANNOTATION, KServeTarget, build_inference_service
from transferkit.serve.repository import RepositoryOptions

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "kserve-inferenceservice-v1beta1.json").read_text())
BUCKET = "models"
INT8 = RepositoryOptions(variant="int8")  # 4x smaller uploads than the fp32 graph


@pytest.fixture(scope="module")
def export_dir():
    return shared_export()


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture
def s3(monkeypatch, tmp_path, s3_endpoint):
    s3_env(monkeypatch, tmp_path)
    return boto3.client("s3", endpoint_url=s3_endpoint)


def _keys(s3, prefix):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def _versions(s3, prefix, model):
    return sorted({int(k.split("/")[2]) for k in _keys(s3, f"{prefix}/{model}/") if k.split("/")[2].isdigit()})


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_remote(tmp_path):
    bare = tmp_path / "deploy-config.git"
    _git(tmp_path, "init", "--bare", "-b", "main", str(bare))
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", str(bare), str(clone))
    (clone / "helm").mkdir()
    (clone / "helm" / "values.yaml").write_text("replicas: 2\nserving:\n  gpu: 1\n")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-m", "initial")
    _git(clone, "push", "origin", "HEAD:main")
    return bare, clone


def _gitops(export_dir, s3_endpoint, clone, **kwargs):
    return DeployConfig(onnx_dir=export_dir, name="sentiment", mode="gitops", repository=f"s3://{BUCKET}/gitops",
                        s3_endpoint_url=s3_endpoint, git_repo=clone, values_file="helm/values.yaml",
                        values_key="serving.model", git_remote="origin", keep_versions=2, options=INT8, **kwargs)


def test_gitops_commits_and_pushes_then_rejected_push_unpublishes(export_dir, s3, s3_endpoint, git_remote):
    bare, clone = git_remote
    first = deploy_model(_gitops(export_dir, s3_endpoint, clone))
    second = deploy_model(_gitops(export_dir, s3_endpoint, clone))
    assert (first.version, second.version, second.previous_version) == (1, 2, 1)
    pushed = yaml.safe_load(_git(bare, "show", "main:helm/values.yaml"))
    assert pushed == {"replicas": 2, "serving": {"gpu": 1, "model": {
        "name": "sentiment", "version": 2, "repositoryUri": f"s3://{BUCKET}/gitops"}}}
    assert _git(bare, "rev-parse", "main") == second.git_commit
    message = _git(bare, "log", "-1", "--format=%B", "main")
    assert message.startswith("deploy sentiment version 2") and f"s3://{BUCKET}/gitops" in message
    assert _versions(s3, "gitops", "sentiment_onnx") == [1, 2]

    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'policy: deploys are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(DeploymentError, match=r"git push to origin rejected: .*local commit undone"):
        deploy_model(_gitops(export_dir, s3_endpoint, clone))
    assert _git(clone, "rev-parse", "HEAD") == second.git_commit == _git(bare, "rev-parse", "main")
    assert yaml.safe_load((clone / "helm" / "values.yaml").read_text())["serving"]["model"]["version"] == 2
    assert _versions(s3, "gitops", "sentiment_onnx") == [1, 2]  # version 3 unpublished
    assert not [k for k in _keys(s3, "gitops/") if "/3/" in k or ".tmp-" in k]


def test_gitops_missing_s3_credentials_touches_nothing(export_dir, s3, s3_endpoint, git_remote, monkeypatch):
    _, clone = git_remote
    head = _git(clone, "rev-parse", "HEAD")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError, match="no S3 credentials"):
        deploy_model(_gitops(export_dir, s3_endpoint, clone))
    assert _git(clone, "rev-parse", "HEAD") == head


def test_gitops_config_is_validated(export_dir, tmp_path):
    with pytest.raises(ConfigError, match="git_repo"):
        DeployConfig(onnx_dir=export_dir, name="m", mode="gitops", repository=str(tmp_path))
    with pytest.raises(ConfigError, match="name"):
        DeployConfig(onnx_dir=export_dir, name="a/../b", mode="gitops", repository=str(tmp_path), git_repo=tmp_path)


class FakeController(threading.Thread):
    """Plays KServe's controller: marks a new predictor version Ready (or failed) after a moment."""

    def __init__(self, kube, *, fail_versions=()):
        super().__init__(daemon=True)
        self.api = kube.api()
        self.fail_versions = {str(v) for v in fail_versions}
        self.stop = threading.Event()
        self.seen = set()

    def run(self):
        while not self.stop.wait(0.05):
            try:
                obj = self.api.get_namespaced_custom_object(GROUP, VERSION, "ml", PLURAL, "sentiment")
            except Exception:
                continue
            version = obj["spec"]["predictor"]["annotations"][VERSION_ANNOTATION]
            if version in self.seen:
                continue
            self.seen.add(version)
            failed = version in self.fail_versions
            condition = {"type": "Ready", "status": "False" if failed else "True",
                         "message": "RevisionFailed: container crashed" if failed else ""}
            status = {"conditions": [condition], "url": "http://sentiment.ml.example.com"}
            self.api.patch_namespaced_custom_object(GROUP, VERSION, "ml", PLURAL, "sentiment", {"status": status})


def _kserve(export_dir, s3_endpoint, kube, **kwargs):
    return DeployConfig(onnx_dir=export_dir, name="sentiment", mode="kserve", repository=f"s3://{BUCKET}/kserve",
                        s3_endpoint_url=s3_endpoint, namespace="ml", kube_api_url=kube.url, ready_poll_s=0.3,
                        ready_timeout_s=3, attempts=2, options=INT8, **kwargs)


def test_built_inference_service_matches_the_schema():
    body = build_inference_service(KServeTarget(name="sentiment", namespace="ml"), "s3://m/r", "sentiment", 7)
    jsonschema.validate(body, SCHEMA)
    assert body["spec"]["predictor"]["model"]["modelFormat"] == {"name": "triton"}
    assert body["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpu = build_inference_service(KServeTarget(name="s", gpus=0, runtime=None), "s3://m/r", "s", 1)
    jsonschema.validate(cpu, SCHEMA)
    assert "nvidia.com/gpu" not in cpu["spec"]["predictor"]["model"]["resources"]["limits"]
    logged = build_inference_service(KServeTarget(name="s", logger_url="http://monitor.ml:8008/v1/events"),
                                     "s3://m/r", "s", 1)
    jsonschema.validate(logged, SCHEMA)
    assert logged["spec"]["predictor"]["logger"] == {"mode": "all", "url": "http://monitor.ml:8008/v1/events"}
    assert "logger" not in body["spec"]["predictor"]
    wrong = json.loads(json.dumps(logged))
    wrong["spec"]["predictor"]["logger"]["mode"] = "both"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, SCHEMA)
    broken = json.loads(json.dumps(body))
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_kserve_create_patch_and_failed_rollout_restores(export_dir, s3, s3_endpoint):
    with KubeAPI() as kube:
        controller = FakeController(kube, fail_versions=[3])
        controller.start()
        try:
            first = deploy_model(_kserve(export_dir, s3_endpoint, kube))
            second = deploy_model(_kserve(export_dir, s3_endpoint, kube))
            api = kube.api()
            stored = api.get_namespaced_custom_object(GROUP, VERSION, "ml", PLURAL, "sentiment")
            jsonschema.validate(stored, SCHEMA)
            assert (first.version, second.version) == (1, 2)
            assert second.endpoint == "http://sentiment.ml.example.com/v2/models/sentiment/infer"
            assert second.inference_service == "ml/sentiment"
            assert stored["spec"]["predictor"]["model"]["storageUri"] == f"s3://{BUCKET}/kserve"
            assert stored["spec"]["predictor"]["annotations"][VERSION_ANNOTATION] == "2"

            with pytest.raises(DeploymentError, match=r"version 3 not deployed: .*not Ready.*RevisionFailed.*"
                                                      r"previous spec restored"):
                deploy_model(_kserve(export_dir, s3_endpoint, kube))
            restored = api.get_namespaced_custom_object(GROUP, VERSION, "ml", PLURAL, "sentiment")
            assert restored["spec"]["predictor"]["annotations"][VERSION_ANNOTATION] == "2"
            assert _versions(s3, "kserve", "sentiment_onnx") == [1, 2]
        finally:
            controller.stop.set()
            controller.join(5)


def test_kserve_unreachable_api_fails_before_publishing(export_dir, s3, s3_endpoint):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = DeployConfig(onnx_dir=export_dir, name="sentiment", mode="kserve", repository=f"s3://{BUCKET}/down",
                          s3_endpoint_url=s3_endpoint, kube_api_url=f"http://127.0.0.1:{port}", attempts=2)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="Kubernetes API unreachable"):
        deploy_model(config)
    assert time.monotonic() - started < 30
    assert _keys(s3, "down/") == []


def test_kserve_deploy_points_the_payload_logger_at_the_monitor(export_dir, s3, s3_endpoint):
    import dataclasses

    options = dataclasses.replace(INT8, monitor_url="http://transferkit-monitor.ml:8008/")
    with KubeAPI() as kube:
        controller = FakeController(kube)
        controller.start()
        try:
            config = DeployConfig(onnx_dir=export_dir, name="sentiment", mode="kserve",
                                  repository=f"s3://{BUCKET}/logged", s3_endpoint_url=s3_endpoint, namespace="ml",
                                  kube_api_url=kube.url, ready_poll_s=0.3, ready_timeout_s=3, attempts=2,
                                  options=options)
            deploy_model(config)
            stored = kube.api().get_namespaced_custom_object(GROUP, VERSION, "ml", PLURAL, "sentiment")
            jsonschema.validate(stored, SCHEMA)
            assert stored["spec"]["predictor"]["logger"] == {"mode": "all",
                                                             "url": "http://transferkit-monitor.ml:8008/v1/events"}
        finally:
            controller.stop.set()
            controller.join(5)
    with pytest.raises(ConfigError, match="^monitor_url: expected an http\\(s\\):// URL for KServe's payload logger"):
        DeployConfig(onnx_dir=export_dir, name="sentiment", mode="kserve", repository=f"s3://{BUCKET}/logged",
                     options=dataclasses.replace(INT8, monitor_url="transferkit-monitor:8008"))
