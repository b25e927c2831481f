"""``submit_train_job`` (the Kubeflow SDK's ``TrainerClient``) against a Kubernetes API stand-in (kmock) on loopback.

kmock's ``KubernetesEmulator`` stores objects in memory and serves create/get/patch/delete/list like an
API server; the fixture adds the ConfigMap a Kubeflow Trainer control plane publishes (the SDK reads it on
connecting). A small "controller" thread plays Kubeflow Trainer: it finds the created TrainJob and writes
status updates through the ``/status`` subresource, one step at a time, waiting after each step until
the launcher has read the object again, so every transition is observed deterministically. The launcher
itself uses the real SDK and ``kubernetes`` client, configured from a kubeconfig file, as a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from tests.unit.k8s.validation import ManifestError, validate_manifest
from transferkit import images
from transferkit.errors import TrainingError
from transferkit.train.trainjob import CHECKPOINT_MOUNT, OUTPUT_MOUNT, submit_train_job

kmock = pytest.importorskip("kmock")

pytestmark = pytest.mark.integration

NAMESPACE = "transferkit"
COLLECTION = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs"
# What a Kubeflow Trainer v2.3 control plane publishes for clients (the SDK reads it when it connects).
TRAINER_PUBLIC = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "kubeflow-trainer-public", "namespace": "kubeflow-system"},
                  "data": {"kubeflow_trainer_version": "2.3.0"}}
ARGS = ["--data", "/mnt/checkpoints/data/movies", "--model", "minilm-l6", "--strategy", "full",
        "--out", "/mnt/outputs/run-7", "--epochs", "1"]


class KubeApi:
    """kmock's Kubernetes emulator served from a background event loop, for synchronous clients."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock", daemon=True)

    def __enter__(self) -> KubeApi:
        self._thread.start()

        async def start() -> tuple[Any, Any]:
            handler = kmock.KubernetesEmulator()
            await handler.__aenter__()
            server = kmock.Server(handler)
            await server.__aenter__()
            return handler, server

        self.handler, self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self.url = str(self._server.url).rstrip("/")
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            await self._server.__aexit__(None, None, None)
            await self.handler.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/merge-patch+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def reads_of(self, name: str) -> int:
        """GET requests the launcher made for TrainJob ``name`` so far."""
        return len(self.handler[f"get {COLLECTION}/{name}"])


@pytest.fixture()
def api(tmp_path, monkeypatch):
    from kubernetes import client

    previous = client.Configuration._default
    with KubeApi() as server:
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": server.url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": NAMESPACE}}],
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never pick an in-cluster config here
        assert server.request("POST", "/api/v1/namespaces/kubeflow-system/configmaps", TRAINER_PUBLIC)[0] in (200, 201)
        yield server
    client.Configuration.set_default(previous)


def created_trainjob(api: KubeApi) -> dict[str, Any]:
    """The TrainJob the SDK posted (exactly one)."""
    (created,) = [r.data for r in api.handler[f"post {COLLECTION}"]]
    return created


def node_pod_patch(job: dict[str, Any]) -> dict[str, Any]:
    """The pod spec patch of the ``node`` replicated job in the TrainJob's single runtime patch."""
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "trainer.kubeflow.org/kubeflow-sdk"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]["spec"]


def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def jobs(active: int, ready: int, succeeded: int = 0, failed: int = 0) -> list[dict[str, Any]]:
    return [{"name": "node", "active": active, "ready": ready, "succeeded": succeeded, "failed": failed,
             "suspended": 0}]


class TrainerController(threading.Thread):
    """Plays Kubeflow Trainer: writes each status step once the launcher has seen the previous one."""

    def __init__(self, api: KubeApi, steps: list[dict[str, Any] | str], before: Any = None) -> None:
        super().__init__(name="fake-trainer", daemon=True)
        self.api, self.steps, self.before = api, steps, before
        self.name_seen: str | None = None
        self.error: BaseException | None = None

    def _await(self, predicate: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the launcher did not make progress")
            time.sleep(0.01)

    def _job_name(self) -> str | None:
        status, listing = self.api.request("GET", COLLECTION)
        items = (listing or {}).get("items") or [] if status == 200 else []
        return items[0]["metadata"]["name"] if items else None

    def run(self) -> None:
        try:
            self._await(lambda: self._job_name() is not None)
            name = self.name_seen = self._job_name()
            if self.before:
                self.before(name)
            for step in self.steps:
                reads = self.api.reads_of(name)
                self._await(lambda seen=reads: self.api.reads_of(name) > seen)  # the launcher saw the last state
                if step == "delete":
                    self.api.request("DELETE", f"{COLLECTION}/{name}")
                else:
                    self.api.request("PATCH", f"{COLLECTION}/{name}/status", {"status": step})
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def run_with(api: KubeApi, steps: list[Any], before: Any = None, **kwargs: Any) -> tuple[Any, TrainerController]:
    controller = TrainerController(api, steps, before)
    controller.start()
    try:
        outcome: Any = submit_train_job(ARGS, **{"nodes": 2, "gpus_per_node": 4, "namespace": NAMESPACE,
                                                 "checkpoint_pvc": "transferkit-checkpoints",
                                                 "output_pvc": "transferkit-checkpoints", "poll_s": 0.02,
                                                 "timeout_s": 30, **kwargs})
    except TrainingError as exc:
        outcome = exc
    controller.join(10)
    assert controller.error is None, controller.error
    return outcome, controller


def test_submits_follows_every_transition_and_returns_on_complete(api, caplog):
    caplog.set_level(logging.INFO, logger="transferkit.train.trainjob")
    steps = [
        {"jobsStatus": jobs(0, 0)},
        {"conditions": [condition("Suspended", "True", "Suspended", "waiting in the queue for 8 GPUs")]},
        {"conditions": [condition("Suspended", "False", "Resumed", "admitted")], "jobsStatus": jobs(2, 2)},
        {"conditions": [condition("Suspended", "False", "Resumed", "admitted"),
                        condition("Complete", "True", "JobSetCompleted", "jobset completed successfully")],
         "jobsStatus": jobs(0, 0, succeeded=2)},
    ]
    record, controller = run_with(api, steps)
    assert not isinstance(record, Exception), record
    name = controller.name_seen
    assert record["name"] == name and record["namespace"] == NAMESPACE
    assert record["state"] == "Complete"
    assert record["detail"] == "JobSetCompleted: jobset completed successfully"
    assert record["image"] == images.RUNTIME_CUDA_IMAGE
    assert record["command"] == ["torchrun", "--nproc-per-node", "4", "-m", "transferkit.cli.main", "train", *ARGS]
    assert [c["type"] for c in record["conditions"]] == ["Suspended", "Complete"]

    # What reached the API server is a valid TrainJob, and so is its final state with the controller's status.
    created = created_trainjob(api)
    validate_manifest(created)
    status, final = api.request("GET", f"{COLLECTION}/{name}")
    assert status == 200
    validate_manifest(final)
    assert created["spec"]["trainer"]["numNodes"] == 2
    assert created["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "4"}
    pod = node_pod_patch(created)
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v] == [
        "transferkit-checkpoints"]

    messages = [r.getMessage() for r in caplog.records]
    states = [m.split(": ", 1)[1].split(" (")[0] for m in messages if m.startswith(f"TrainJob {NAMESPACE}/{name}:")]
    assert states == ["Pending", "Pending", "Suspended", "Running", "Complete"]  # one per status step
    assert any(m.startswith(f"Created TrainJob {NAMESPACE}/{name}: 2 node(s) x 4 GPU(s)") for m in messages)
    assert any("node: 2 active, 2 ready, 0 succeeded, 0 failed" in m for m in messages)


def test_failure_propagates_the_reason_and_the_pods_termination(api, caplog):
    caplog.set_level(logging.INFO, logger="transferkit.train.trainjob")

    def failed_pod(name: str) -> None:
        # What the JobSet controller's pod looks like after the kernel killed the trainer.
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-node-0-0-x7k2p", "namespace": NAMESPACE,
                            "labels": {"jobset.sigs.k8s.io/jobset-name": name}},
               "spec": {"containers": [{"name": "node", "image": images.RUNTIME_CUDA_IMAGE}]},
               "status": {"phase": "Failed", "containerStatuses": [{
                   "name": "node", "ready": False, "restartCount": 0, "image": images.RUNTIME_CUDA_IMAGE,
                   "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
        assert api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)[0] in (200, 201)
        log_path = f"get /api/v1/namespaces/{NAMESPACE}/pods/{name}-node-0-0-x7k2p/log"
        api.handler[log_path] << b"epoch 1/3\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"

    steps = [
        {"jobsStatus": jobs(2, 2)},
        {"conditions": [condition("Failed", "True", "FailedJobs",
                                  "jobset failed: job node-0 reached its backoff limit")],
         "jobsStatus": jobs(0, 0, failed=1)},
    ]
    error, controller = run_with(api, steps, before=failed_pod)
    assert isinstance(error, TrainingError)
    message = str(error)
    name = controller.name_seen
    assert message.startswith(f"TrainJob {NAMESPACE}/{name} failed: FailedJobs: jobset failed: job node-0")
    assert f"pod {name}-node-0-0-x7k2p container node terminated: OOMKilled (exit 137)" in message
    assert message.endswith("last log line: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "\n" not in message
    assert any("| epoch 1/3" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_timeout_cancels_the_job(api):
    error, controller = run_with(api, [{"jobsStatus": jobs(2, 2)}], timeout_s=2.0)
    assert isinstance(error, TrainingError)
    name = controller.name_seen
    assert str(error) == (f"TrainJob {NAMESPACE}/{name} did not finish within 2 s (last state Running "
                          "(node: 2 active, 2 ready, 0 succeeded, 0 failed)); it was deleted")
    assert api.request("GET", f"{COLLECTION}/{name}")[0] == 404
    (delete,) = api.handler[f"delete {COLLECTION}/{name}"]
    assert delete.params["propagationPolicy"] == "Foreground"


def test_a_job_deleted_while_waiting_is_an_error(api):
    error, controller = run_with(api, ["delete"])
    assert isinstance(error, TrainingError)
    assert str(error) == f"TrainJob {NAMESPACE}/{controller.name_seen} disappeared while waiting (deleted by someone?)"


def test_no_wait_returns_after_creation(api):
    record = submit_train_job(ARGS, nodes=1, gpus_per_node=0, namespace=NAMESPACE, wait=False, name="quick-job")
    assert record["state"] == "Submitted" and record["name"] == "quick-job"
    assert record["image"] == images.RUNTIME_IMAGE
    status, stored = api.request("GET", f"{COLLECTION}/quick-job")
    # One torch process on a CPU node: torchrun's --nproc-per-node (the SDK cannot set numProcPerNode).
    assert status == 200 and stored["spec"]["trainer"]["command"][:3] == ["torchrun", "--nproc-per-node", "1"]
    assert api.reads_of("quick-job") == 1  # only the check above: the launcher did not poll


def test_forbidden_creation_names_the_missing_permission(api):
    api.handler[f"post {COLLECTION}"] << 403
    with pytest.raises(TrainingError, match=r"forbidden in namespace transferkit; the service account needs "
                                            r"create/get/watch/delete on trainjobs.trainer.kubeflow.org"):
        submit_train_job(ARGS, nodes=2, gpus_per_node=1, namespace=NAMESPACE, name="denied")


def test_missing_trainer_crd_is_reported(api):
    api.handler[f"post {COLLECTION}"] << 404
    with pytest.raises(TrainingError, match=r"trainjobs.trainer.kubeflow.org/v1alpha1 not found in namespace "
                                            r"transferkit; is Kubeflow Trainer \(v2\) installed\?"):
        submit_train_job(ARGS, nodes=2, gpus_per_node=1, namespace=NAMESPACE, name="no-crd")


def test_unreachable_api_server(tmp_path, monkeypatch):
    import socket

    from kubernetes import client

    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 0
    with pytest.raises(TrainingError, match="API server unreachable"):
        submit_train_job(ARGS, nodes=1, gpus_per_node=1, namespace=NAMESPACE, name="offline",
                         client_configuration=configuration)


def test_kubeconfig_is_required_outside_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TrainingError, match="no Kubernetes configuration"):
        submit_train_job(ARGS, nodes=1, gpus_per_node=1, namespace=NAMESPACE)


def test_created_object_round_trips_through_yaml(api):
    # kubectl users read these objects as YAML: the body must survive a YAML round trip unchanged.
    submit_train_job(ARGS, nodes=3, gpus_per_node=8, namespace=NAMESPACE, wait=False, name="yaml-job",
                     tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    created = created_trainjob(api)
    assert yaml.safe_load(yaml.safe_dump(created)) == created
    validate_manifest(created)
    assert node_pod_patch(created)["tolerations"][0]["operator"] == "Exists"


# --- the object the SDK builds (moved from the unit tests: the SDK builds it only on the way to the API) ---------


def test_gpu_job_shape_validates_against_the_trainjob_schema(api):
    submit_train_job(ARGS, nodes=2, gpus_per_node=4, namespace=NAMESPACE, wait=False, name="transferkit-train-1",
                     checkpoint_pvc="transferkit-checkpoints", output_pvc="transferkit-outputs",
                     node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                     tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                     cpu_per_node="16", memory_per_node="128Gi", env={"NCCL_DEBUG": "WARN"},
                     image_pull_secrets=["regcred"], service_account="transferkit-pipeline-runner")
    job = created_trainjob(api)
    validate_manifest(job)
    assert job["metadata"]["name"] == "transferkit-train-1"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "transferkit"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}  # apiGroup: default
    trainer = spec["trainer"]
    assert trainer["image"] == images.RUNTIME_CUDA_IMAGE
    assert trainer["command"] == ["torchrun", "--nproc-per-node", "4", "-m", "transferkit.cli.main", "train", *ARGS]
    assert trainer["numNodes"] == 2
    # The SDK sets the limits equal to the requests.
    resources = {"nvidia.com/gpu": "4", "cpu": "16", "memory": "128Gi"}
    assert trainer["resourcesPerNode"] == {"limits": resources, "requests": resources}
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["NCCL_DEBUG"] == "WARN" and env["TRANSFERKIT_TRAINJOB"] == "transferkit-train-1"
    assert env["TRANSFERKIT_CHECKPOINT_ROOT"] == CHECKPOINT_MOUNT and env["TRANSFERKIT_OUTPUT_ROOT"] == OUTPUT_MOUNT
    pod = node_pod_patch(job)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"checkpoints": "transferkit-checkpoints", "outputs": "transferkit-outputs"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]} == {
        "/dev/shm": "dshm", CHECKPOINT_MOUNT: "checkpoints", OUTPUT_MOUNT: "outputs"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "transferkit-pipeline-runner"


def test_cpu_job_uses_the_cpu_image_and_one_process_per_node(api):
    submit_train_job(ARGS, nodes=2, gpus_per_node=0, namespace=NAMESPACE, wait=False, name="cpu-job",
                     checkpoint_pvc="transferkit-checkpoints", output_pvc="transferkit-checkpoints",
                     runtime="torch-cpu", runtime_kind="TrainingRuntime")
    job = created_trainjob(api)
    validate_manifest(job)
    assert job["spec"]["runtimeRef"] == {"name": "torch-cpu", "kind": "TrainingRuntime"}
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == images.RUNTIME_IMAGE
    assert trainer["command"][:3] == ["torchrun", "--nproc-per-node", "1"]
    assert "resourcesPerNode" not in trainer
    pod = node_pod_patch(job)
    # One claim for both roles: one volume, mounted at both paths.
    assert [v["name"] for v in pod["volumes"]] == ["dshm", "checkpoints"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[CHECKPOINT_MOUNT] == mounts[OUTPUT_MOUNT] == "checkpoints"
    # No runtime was read to create the job (a namespace Role cannot grant reading ClusterTrainingRuntimes).
    urls = [str(r.url) for r in api.handler]
    assert any(url.endswith(COLLECTION) for url in urls) and not any("trainingruntimes" in url for url in urls)


def test_schema_rejects_what_the_trainer_api_rejects(api):
    submit_train_job(ARGS, nodes=1, gpus_per_node=1, namespace=NAMESPACE, wait=False, name="ok-name")
    job = created_trainjob(api)
    validate_manifest(job)
    bad = {**job, "metadata": {**job["metadata"], "name": "9-starts-with-a-digit"}}
    with pytest.raises(ManifestError, match="metadata.name"):
        validate_manifest(bad)
    bad = {**job, "spec": {**job["spec"], "trainer": {**job["spec"]["trainer"], "numNode": 2}}}
    with pytest.raises(ManifestError, match="numNode"):
        validate_manifest(bad)
    bad = {**job, "spec": {**job["spec"], "podTemplateOverrides": []}}  # the pre-2.3 field
    with pytest.raises(ManifestError, match="podTemplateOverrides"):
        validate_manifest(bad)


def test_cli_launcher_submits_through_the_sdk(api):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    result = CliRunner().invoke(app, ["train", *ARGS, "--launcher", "trainjob", "--nodes", "2", "--gpus-per-node", "2",
                                      "--namespace", NAMESPACE, "--checkpoint-pvc", "transferkit-checkpoints",
                                      "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["state"] == "Submitted" and record["nodes"] == 2 and record["gpus_per_node"] == 2
    job = created_trainjob(api)
    validate_manifest(job)
    assert job["metadata"]["name"] == record["name"]
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "2"}
    command = trainer["command"]
    assert command[:6] == ["torchrun", "--nproc-per-node", "2", "-m", "transferkit.cli.main", "train"]
    assert command[6:8] == ["--data", "/mnt/checkpoints/data/movies"] and "--launcher" not in command
