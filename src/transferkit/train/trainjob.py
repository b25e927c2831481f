"""Multi-node training on Kubeflow Trainer through the Kubeflow SDK's ``TrainerClient``.

``transferkit train ... --launcher trainjob --nodes N --gpus-per-node G`` lands here. ``TrainerClient.train()``
builds and creates the TrainJob: a ``CustomTrainerContainer`` (runtime-cuda image, N nodes, G GPUs per node) on a
torch runtime (``torch-distributed``), with the SDK's options for name, labels, command and a ``RuntimePatch``
mounting the PersistentVolumeClaims (:data:`CHECKPOINT_MOUNT`, :data:`OUTPUT_MOUNT`) and placing the nodes. Each
node runs ``torchrun --nproc-per-node G -m transferkit.cli.main train ...``; torchrun takes the rendezvous from
the ``PET_*`` variables of the Trainer's torch plugin, so N x G ranks run the local train entry point.

What the SDK (kubeflow 0.5.0) could not do, kept hand-written here:

- ``numProcPerNode``: ``CustomTrainerContainer`` cannot set it (the runtime's default, ``auto``, may start one
  process per core on CPU nodes), so it is torchrun's ``--nproc-per-node`` in the command.
- Following the job: ``get_job``/``wait_for_job_status`` read the runtime on every poll (a cluster-scoped
  ClusterTrainingRuntime, which the platform's namespace Role cannot grant; for the same reason ``train()``
  gets a ``Runtime`` object, not a name to look up), know only Created/Running/Complete/Failed (no condition
  reason, no Suspended state of a queued job, no child-job counts) and give up on the first failed read. So
  the TrainJob object is polled with the SDK's Kubernetes client: every change is logged, ``Failed`` raises
  :class:`TrainingError` with the reason, transient read errors are retried.
- Failure diagnostics: the SDK's steps carry the pod phase only and ``get_job_logs`` reads whole logs; the
  failed pod's termination reason, exit code and last log lines are read from the pod.
- Cancelling on timeout: ``delete_job`` cannot ask for foreground deletion, which keeps the job visible until
  its pods (and their GPUs) are gone.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from transferkit.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
DEFAULT_RUNTIME = "torch-distributed"
# The platform's checkpoint claim (manifests/base/pvc-checkpoints.yaml).
DEFAULT_CHECKPOINT_PVC = "transferkit-checkpoints"
CHECKPOINT_MOUNT = "/mnt/checkpoints"
OUTPUT_MOUNT = "/mnt/outputs"
# Replicated job and container name of the trainer nodes in Kubeflow's torch runtimes.
TRAINER_JOB = "node"
# Label the JobSet controller puts on every pod of the TrainJob's JobSet (same name as the TrainJob).
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_RESOURCE_NAME = re.compile(r"^([a-z0-9.-]+/)?[a-z0-9.-]+$")
_PATH_FLAGS = ("--out", "--checkpoint-dir")
# Consecutive failed status reads tolerated while waiting (API server restarts, network blips).
_MAX_POLL_ERRORS = 10


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class TrainJobConfig:
    """A multi-node training run on Kubeflow Trainer.

    Attributes:
        train_args: Arguments of ``transferkit train`` (paths must be valid inside the pods).
        nodes: Number of training nodes (pods).
        gpus_per_node: GPUs per node; one torch process per GPU. 0 trains on CPU with one process per node.
        namespace: Namespace of the TrainJob (where the runtime, the PVCs and the RBAC of the platform are).
        checkpoint_pvc: Claim mounted at :data:`CHECKPOINT_MOUNT` on every node.
        output_pvc: Claim mounted at :data:`OUTPUT_MOUNT` on every node (may equal ``checkpoint_pvc``).
        wait: Follow the job until it completes (``False``: return right after creation).
        timeout_s: Seconds to wait for completion, counted from creation.
        runtime: Name of the training runtime (``torch-distributed`` ships with Kubeflow Trainer).
        runtime_kind: ``ClusterTrainingRuntime`` or a namespaced ``TrainingRuntime``.
        image: Trainer image; default: the runtime-cuda image (the CPU runtime image when ``gpus_per_node`` is 0).
        poll_s: Seconds between status reads.
        name: TrainJob name (an RFC 1035 label); default: ``transferkit-train-<UTC time>-<random>``.
        gpu_resource: Extended resource name of the GPUs.
        cpu_per_node, memory_per_node: Requests per node, Kubernetes quantities (the SDK makes them limits too).
        shm_size: Size of the memory-backed ``/dev/shm`` (NCCL and DataLoader workers need more than 64 MiB).
        node_selector, tolerations: Placement of the nodes (GPU product labels, GPU taints).
        service_account: Service account of the training pods.
        image_pull_secrets: Secrets for pulling the image from a private registry.
        env: Extra environment variables of the training container (names only are logged).
        labels: Extra labels of the TrainJob.
        cancel_on_timeout: Delete the TrainJob when the wait times out (frees its GPUs).

    """

    train_args: list[str]
    nodes: int
    gpus_per_node: int
    namespace: str
    checkpoint_pvc: str | None = None
    output_pvc: str | None = None
    wait: bool = True
    timeout_s: float = 86400.0
    runtime: str = DEFAULT_RUNTIME
    runtime_kind: str = "ClusterTrainingRuntime"
    image: str | None = None
    poll_s: float = 5.0
    name: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str | None = None
    memory_per_node: str | None = None
    shm_size: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cancel_on_timeout: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.train_args, list | tuple) and all(isinstance(a, str) for a in self.train_args),
               f"train_args: expected a list of strings, got {self.train_args!r}")
        self.train_args = list(self.train_args)
        _check(isinstance(self.nodes, int) and not isinstance(self.nodes, bool) and self.nodes >= 1,
               f"nodes: expected an integer >= 1, got {self.nodes!r}")
        _check(isinstance(self.gpus_per_node, int) and not isinstance(self.gpus_per_node, bool)
               and self.gpus_per_node >= 0, f"gpus_per_node: expected an integer >= 0, got {self.gpus_per_node!r}")
        _check(isinstance(self.namespace, str) and bool(_DNS_LABEL.match(self.namespace))
               and len(self.namespace) <= 63, f"namespace: {self.namespace!r} is not a valid namespace name")
        for attr in ("checkpoint_pvc", "output_pvc"):
            value = getattr(self, attr)
            _check(value is None or (bool(_DNS_SUBDOMAIN.match(value)) and len(value) <= 253),
                   f"{attr}: {value!r} is not a valid PersistentVolumeClaim name")
        _check(self.timeout_s > 0, f"timeout_s: expected a positive number of seconds, got {self.timeout_s!r}")
        _check(self.poll_s > 0, f"poll_s: expected a positive number of seconds, got {self.poll_s!r}")
        _check(bool(self.runtime) and bool(_DNS_SUBDOMAIN.match(self.runtime)),
               f"runtime: {self.runtime!r} is not a valid runtime name")
        _check(self.runtime_kind in RUNTIME_KINDS,
               f"runtime_kind: expected one of {', '.join(RUNTIME_KINDS)}, got {self.runtime_kind!r}")
        _check(self.image is None or (bool(self.image) and not any(c.isspace() for c in self.image)),
               f"image: {self.image!r} is not an image reference")
        if self.name is not None:
            _check(bool(_RFC1035.match(self.name)) and len(self.name) <= 63,
                   f"name: {self.name!r} must be a lowercase RFC 1035 label of at most 63 characters")
        _check(bool(_RESOURCE_NAME.match(self.gpu_resource)),
               f"gpu_resource: {self.gpu_resource!r} is not a resource name (e.g. nvidia.com/gpu)")
        for attr in ("cpu_per_node", "memory_per_node", "shm_size"):
            value = getattr(self, attr)
            _check(value is None or bool(_QUANTITY.match(str(value))),
                   f"{attr}: {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
        for key in self.env:
            _check(bool(_ENV_NAME.match(key)), f"env: {key!r} is not a valid environment variable name")
        for i, toleration in enumerate(self.tolerations):
            _check(isinstance(toleration, dict) and toleration.get("operator", "Equal") in ("Equal", "Exists"),
                   f"tolerations[{i}]: expected a mapping with operator Equal or Exists, got {toleration!r}")
        for flag in _PATH_FLAGS:
            value = _flag_value(self.train_args, flag)
            _check(value is None or value.startswith("/") or "://" in value,
                   f"train_args {flag}: {value!r} must be an absolute path inside the pods "
                   f"(e.g. {OUTPUT_MOUNT}/run-1 on output_pvc) or a URI")

    @property
    def trainer_image(self) -> str:
        """The image the nodes run."""
        from transferkit import images

        if self.image:
            return self.image
        return images.RUNTIME_CUDA_IMAGE if self.gpus_per_node > 0 else images.RUNTIME_IMAGE

    @property
    def procs_per_node(self) -> int:
        """Torch processes per node: one per GPU, one on CPU nodes (``auto`` would use every core)."""
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def mounts(self) -> list[str]:
        """Mount paths of the claims shared by every node."""
        return [path for claim, path in ((self.checkpoint_pvc, CHECKPOINT_MOUNT), (self.output_pvc, OUTPUT_MOUNT))
                if claim]

    def unshared_paths(self) -> list[tuple[str, str]]:
        """``(flag, path)`` of output paths in ``train_args`` outside every mounted claim."""
        found = []
        for flag in _PATH_FLAGS:
            value = _flag_value(self.train_args, flag)
            if value is None or "://" in value:
                continue
            if not any(value == mount or value.startswith(mount + "/") for mount in self.mounts):
                found.append((flag, value))
        return found

    @property
    def command(self) -> list[str]:
        """The trainer container's command: the train entry point under torchrun."""
        # torchrun takes --nnodes, --node-rank and the master address from the PET_* variables Kubeflow
        # Trainer's torch plugin sets; no --standalone on multi-node jobs. --nproc-per-node is explicit: the SDK's
        # CustomTrainerContainer cannot set the TrainJob's numProcPerNode (see the module docstring).
        return ["torchrun", "--nproc-per-node", str(self.procs_per_node), "-m", "transferkit.cli.main", "train",
                *self.train_args]


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def default_name() -> str:
    """``transferkit-train-<UTC yyyymmdd-hhmmss>-<4 hex>`` (38 characters)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"transferkit-train-{stamp}-{secrets.token_hex(2)}"


def trainjob_request(config: TrainJobConfig, name: str) -> dict[str, Any]:
    """The keyword arguments of ``TrainerClient.train()`` for ``config``: runtime, trainer and options."""
    from kubeflow import trainer as kt
    from kubeflow.trainer import options as sdk

    # The SDK sets the limits equal to the requests (a CPU request is also a CPU limit). String quantities:
    # integer GPU counts are rejected by newer kubernetes clients.
    resources = {config.gpu_resource: str(config.gpus_per_node)} if config.gpus_per_node > 0 else {}
    resources.update({key: str(value) for key, value in (("cpu", config.cpu_per_node),
                                                         ("memory", config.memory_per_node)) if value})
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    claims: dict[str, str] = {}
    env = {"TRANSFERKIT_TRAINJOB": name}
    for claim, mount_path, role, variable in (
            (config.checkpoint_pvc, CHECKPOINT_MOUNT, "checkpoints", "TRANSFERKIT_CHECKPOINT_ROOT"),
            (config.output_pvc, OUTPUT_MOUNT, "outputs", "TRANSFERKIT_OUTPUT_ROOT")):
        if claim is None:
            continue
        if claim not in claims:
            claims[claim] = role
            volumes.append({"name": role, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": claims[claim], "mountPath": mount_path})
        env[variable] = mount_path
    env.update({key: str(value) for key, value in sorted(config.env.items())})

    pod = sdk.PodSpecPatch(
        service_account_name=config.service_account, volumes=volumes,
        containers=[sdk.ContainerPatch(name=TRAINER_JOB, volume_mounts=mounts)],
        image_pull_secrets=[{"name": s} for s in config.image_pull_secrets] or None,
        node_selector=dict(config.node_selector) or None, tolerations=[dict(t) for t in config.tolerations] or None,
    )
    node_patch = sdk.ReplicatedJobPatch(name=TRAINER_JOB, template=sdk.JobTemplatePatch(
        spec=sdk.JobSpecPatch(template=sdk.PodTemplatePatch(spec=pod))))
    labels = {"app.kubernetes.io/name": "transferkit", "app.kubernetes.io/component": "train",
              "app.kubernetes.io/managed-by": "transferkit", **config.labels}
    # A Runtime object, not a name: the SDK would read the runtime (cluster-scoped) to resolve it.
    runtime = kt.Runtime(name=config.runtime, kind=kt.RuntimeKind(config.runtime_kind),
                         trainer=kt.RuntimeTrainer(trainer_type=kt.TrainerType.CUSTOM_TRAINER, framework="torch",
                                                   image=config.trainer_image))
    return {
        "runtime": runtime,
        "trainer": kt.CustomTrainerContainer(image=config.trainer_image, num_nodes=config.nodes,
                                             resources_per_node=resources or None, env=env),
        "options": [
            sdk.Name(name), sdk.Labels(labels), sdk.TrainerCommand(config.command),
            sdk.RuntimePatch(training_runtime_spec=sdk.TrainingRuntimeSpecPatch(
                template=sdk.JobSetTemplatePatch(spec=sdk.JobSetSpecPatch(replicated_jobs=[node_patch])))),
        ],
    }


# --- status ------------------------------------------------------------------------------------


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def describe_status(obj: dict[str, Any]) -> tuple[str, str]:
    """``(state, detail)`` of a TrainJob: Complete, Failed, Suspended, Running or Pending."""
    for state in ("Complete", "Failed", "Suspended"):
        condition = _condition(obj, state)
        if condition is not None:
            reason = condition.get("reason") or state
            message = condition.get("message") or ""
            return state, f"{reason}: {message}" if message else reason
    jobs = (obj.get("status") or {}).get("jobsStatus") or []
    if jobs:
        parts = [f"{j.get('name')}: {j.get('active', 0)} active, {j.get('ready', 0)} ready, "
                 f"{j.get('succeeded', 0)} succeeded, {j.get('failed', 0)} failed" for j in jobs]
        active = any((j.get("active") or 0) > 0 or (j.get("ready") or 0) > 0 for j in jobs)
        return ("Running" if active else "Pending"), "; ".join(parts)
    return "Pending", "waiting for the training runtime to create the nodes"


# --- Kubernetes API ----------------------------------------------------------------------------


def _trainer_client(namespace: str, client_configuration: Any | None) -> Any:
    """A ``TrainerClient`` for ``namespace``: kubeconfig ($KUBECONFIG, may list several files), else in-cluster."""
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
    from kubernetes import config

    # $KUBECONFIG is passed explicitly: the kubernetes client reads it once, at import.
    backend = KubernetesBackendConfig(namespace=namespace, client_configuration=client_configuration,
                                      config_file=os.environ.get("KUBECONFIG") or None)
    try:
        return TrainerClient(backend)
    except (config.ConfigException, OSError) as exc:
        raise TrainingError(f"no Kubernetes configuration: not in a cluster and no usable kubeconfig ({exc})") from None


def _api_error(exc: Any, action: str, config: TrainJobConfig) -> TrainingError:
    status = getattr(exc, "status", None)
    where = f"namespace {config.namespace}"
    if status == 403:
        return TrainingError(
            f"{action}: forbidden in {where}; the service account needs create/get/watch/delete on "
            f"trainjobs.{GROUP} there (manifests/base/role.yaml)"
        )
    if status == 404:
        return TrainingError(
            f"{action}: {PLURAL}.{GROUP}/{VERSION} not found in {where}; is Kubeflow Trainer (v2) installed?"
        )
    if status == 409:
        return TrainingError(f"{action}: a TrainJob with this name already exists in {where}")
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return TrainingError(f"{action}: Kubernetes API error {status or ''} {reason}".replace("  ", " "))


def _sdk_error(exc: BaseException, action: str, config: TrainJobConfig) -> TrainingError:
    """The SDK wraps API errors in ``RuntimeError``/``TimeoutError``: name the cause in one line."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    cause = exc.__cause__
    if isinstance(cause, ApiException):
        return _api_error(cause, action, config)
    if isinstance(cause, HTTPError | OSError):
        return TrainingError(f"{action}: API server unreachable ({type(cause).__name__})")
    return TrainingError(f"{action}: {exc}")


def _failed_pod_detail(core: Any, namespace: str, name: str) -> str:
    """``pod P container C terminated: Reason (exit N); last log line: ...`` for the first failed pod."""
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_LABEL}={name}").items
    except Exception as exc:  # diagnostics only: RBAC may forbid listing pods
        logger.debug("Cannot list the pods of TrainJob %s/%s: %s", namespace, name, exc)
        return ""
    for pod in pods:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            terminated = status.state.terminated if status.state else None
            if terminated is None and status.last_state is not None:
                terminated = status.last_state.terminated
            if terminated is None or not terminated.exit_code:
                continue
            detail = (f"pod {pod.metadata.name} container {status.name} terminated: "
                      f"{terminated.reason or 'Error'} (exit {terminated.exit_code})")
            try:
                log = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=status.name,
                                                   tail_lines=20)
            except Exception as exc:  # diagnostics only
                logger.debug("Cannot read the log of %s: %s", pod.metadata.name, exc)
                return detail
            lines = [line.strip() for line in str(log).splitlines() if line.strip()]
            for line in lines:
                logger.error("%s | %s", pod.metadata.name, line)
            if lines:
                detail += f"; last log line: {lines[-1][:300]}"
            return detail
    return ""


def submit_train_job(
    train_args: list[str],
    *,
    nodes: int,
    gpus_per_node: int,
    namespace: str,
    checkpoint_pvc: str | None = None,
    output_pvc: str | None = None,
    wait: bool = True,
    timeout_s: float = 86400,
    runtime: str = DEFAULT_RUNTIME,
    image: str | None = None,
    poll_s: float = 5.0,
    client_configuration: Any | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Create a Kubeflow Trainer TrainJob that runs ``transferkit train <train_args>`` and follow it.

    Args:
        train_args: Arguments of ``transferkit train``; paths must exist inside the pods (PVC mounts).
        nodes: Number of training nodes.
        gpus_per_node: GPUs (= torch processes) per node; 0 for CPU nodes.
        namespace: Namespace of the TrainJob.
        checkpoint_pvc: Claim mounted at ``/mnt/checkpoints`` on every node.
        output_pvc: Claim mounted at ``/mnt/outputs`` on every node.
        wait: Wait for completion; ``False`` returns right after creation.
        timeout_s: Seconds to wait, from creation; the job is deleted on timeout.
        runtime: Training runtime to reference (``torch-distributed``).
        image: Trainer image (default: the runtime-cuda image of this version).
        poll_s: Seconds between status reads.
        client_configuration: A ``kubernetes.client.Configuration``; default: kubeconfig, else in-cluster.
        **options: Further :class:`TrainJobConfig` fields (``node_selector``, ``tolerations``,
            ``cpu_per_node``, ``memory_per_node``, ``shm_size``, ``service_account``, ``env``, ``name``...).

    Returns:
        ``{"name", "namespace", "state", "detail", "image", "command", "nodes", "gpus_per_node",
        "duration_s", "conditions"}``; ``state`` is ``Complete``, or ``Submitted`` when not waiting.

    Raises:
        ConfigError: An argument is invalid (the message names it).
        TrainingError: The API refused the job, the job failed (with the reason), or the wait timed out.

    """
    config = TrainJobConfig(
        train_args=list(train_args), nodes=nodes, gpus_per_node=gpus_per_node, namespace=namespace,
        checkpoint_pvc=checkpoint_pvc, output_pvc=output_pvc, wait=wait, timeout_s=timeout_s, runtime=runtime,
        image=image, poll_s=poll_s, **options,
    )
    return TrainJobLauncher(config, client_configuration=client_configuration).run()


class TrainJobLauncher:
    """Submits one :class:`TrainJobConfig` through the Trainer SDK and follows it (see :func:`submit_train_job`)."""

    def __init__(self, config: TrainJobConfig, *, client_configuration: Any | None = None) -> None:
        self.config = config
        self.name = config.name or default_name()
        self.trainer = _trainer_client(config.namespace, client_configuration)
        # The SDK's Kubernetes clients, for what it cannot do (see the module docstring).
        self._custom, self._core = self.trainer.backend.custom_api, self.trainer.backend.core_api

    def run(self) -> dict[str, Any]:
        """Create the TrainJob and, when configured to, wait for its end."""
        config = self.config
        request = trainjob_request(config, self.name)
        if not config.checkpoint_pvc and not config.output_pvc:
            logger.warning("TrainJob %s/%s has no PVC: checkpoints and the trained model are lost when its pods "
                           "end unless --out points at shared storage", config.namespace, self.name)
        for flag, path in config.unshared_paths():
            logger.warning("TrainJob %s/%s: %s %s is not on a mounted PVC (%s); what is written there is lost "
                           "when the pods end", config.namespace, self.name, flag, path, ", ".join(config.mounts))
        try:
            self.trainer.train(**request)
        except (RuntimeError, TimeoutError) as exc:
            raise _sdk_error(exc, f"creating TrainJob {config.namespace}/{self.name}", config) from None
        started = time.monotonic()
        logger.info("Created TrainJob %s/%s: %d node(s) x %d GPU(s), runtime %s, image %s", config.namespace,
                    self.name, config.nodes, config.gpus_per_node, config.runtime, config.trainer_image)
        record = {
            "name": self.name, "namespace": config.namespace, "image": config.trainer_image,
            "command": config.command, "nodes": config.nodes, "gpus_per_node": config.gpus_per_node,
        }
        if not config.wait:
            return {**record, "state": "Submitted", "detail": "not waiting", "duration_s": 0.0, "conditions": []}
        obj = self._wait(started)
        state, detail = describe_status(obj)
        return {**record, "state": state, "detail": detail, "duration_s": round(time.monotonic() - started, 3),
                "conditions": (obj.get("status") or {}).get("conditions") or []}

    def _wait(self, started: float) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        config = self.config
        where = f"{config.namespace}/{self.name}"
        deadline = started + config.timeout_s
        last: tuple[str, str] | None = None
        errors = 0
        while True:
            try:
                obj = self._custom.get_namespaced_custom_object(GROUP, VERSION, config.namespace, PLURAL, self.name)
                errors = 0
            except (ApiException, HTTPError, OSError) as exc:  # OSError/HTTPError: the API server restarts
                status = getattr(exc, "status", None)
                if status == 404:
                    raise TrainingError(f"TrainJob {where} disappeared while waiting (deleted by someone?)") from None
                errors += 1
                if status in (401, 403) or errors > _MAX_POLL_ERRORS:
                    raise (_api_error(exc, f"reading TrainJob {where}", config) if status else TrainingError(
                        f"reading TrainJob {where}: API server unreachable ({exc})")) from None
                logger.warning("Reading TrainJob %s failed (%s); retrying", where, status or type(exc).__name__)
                obj = None
            if obj is not None:
                state = describe_status(obj)
                if state != last:
                    logger.info("TrainJob %s: %s (%s)", where, state[0], state[1])
                    last = state
                if state[0] == "Complete":
                    return obj
                if state[0] == "Failed":
                    pod = _failed_pod_detail(self._core, config.namespace, self.name)
                    raise TrainingError(f"TrainJob {where} failed: {state[1]}" + (f"; {pod}" if pod else ""))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(where, last)
            time.sleep(min(config.poll_s, remaining))

    def _timeout(self, where: str, last: tuple[str, str] | None) -> TrainingError:
        config = self.config
        seen = f"last state {last[0]} ({last[1]})" if last else "no status read"
        action = "left running"
        if config.cancel_on_timeout:
            from kubernetes.client.exceptions import ApiException

            try:  # foreground: the job stays until its pods are gone (the SDK's delete_job cannot ask for it)
                self._custom.delete_namespaced_custom_object(
                    GROUP, VERSION, config.namespace, PLURAL, self.name, propagation_policy="Foreground")
                action = "deleted"
            except ApiException as exc:
                logger.warning("Could not delete TrainJob %s after the timeout: %s", where, exc.status)
                action = "could not be deleted"
        return TrainingError(f"TrainJob {where} did not finish within {config.timeout_s:g} s ({seen}); it was {action}")
