"""The deploy step: publish an exported model to a Triton model repository and roll it out safely.

Modes:

- ``triton``: against a running Triton that shares the repository (Helm-deployed or local): publish
  version N+1, load it through the model-control API, wait until ready, smoke-test it against ONNX
  Runtime in-process, then retire old versions. Any failure rolls back: the new version is removed,
  the previous one reloaded and left serving, and the error says why.
- ``gitops``: publish, then commit ``name``/``version``/``repositoryUri`` into a values file in a Git
  repository (and push when a remote is given); Argo CD or Flux roll it out.
- ``kserve``: publish, then create/patch a KServe ``InferenceService`` and wait until it is Ready;
  on failure the previous spec is restored (or the new service deleted).

In every mode a failure leaves nothing half-published: the version written to the repository is
removed again (version numbers are still never reused).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, DeploymentError, TransferkitError
from transferkit.serve.agreement import AgreementResult, check_agreement
from transferkit.serve.control import DEFAULT_KEY_ENV, TritonControl, read_api_key, split_url
from transferkit.serve.local import RESTRICTED_HEADER
from transferkit.serve.publish import Publication, RepositoryStore, open_store
from transferkit.serve.registry import RegistryConfig
from transferkit.serve.repository import (
    ExportedModel,
    ModelBundle,
    RepositoryOptions,
    load_export,
    validate_model_name,
)
from transferkit.serve.smoke import DEFAULT_SMOKE_TEXTS, SmokeResult, smoke_images_from_data, smoke_test
from transferkit.tasks import export_task

logger = logging.getLogger(__name__)

MODES = ("triton", "gitops", "kserve")


@dataclass
class DeployConfig:
    """Configuration of the deploy step (validated on construction).

    Attributes:
        onnx_dir: Export directory (``io_spec.json``, ONNX graphs, labels, tokenizer or image preprocessing).
        name: Public model name (the ensemble clients call).
        mode: ``triton``, ``gitops`` or ``kserve``.
        repository: Model repository to publish into: a path (local disk or mounted PVC) or ``s3://``.
        storage_uri: How the cluster sees the repository (written to Git / ``storageUri``); default
            ``repository``.
        options: Generated config options (batching, instance kind, TensorRT, ...).
        keep_versions: Versions kept in the repository after a successful rollout.
        s3_endpoint_url: S3-compatible endpoint (else ``AWS_ENDPOINT_URL``).
        triton_url: ``http://host:port`` of the running Triton (mode ``triton``).
        api_key_env: Environment variable holding the restricted model-control key.
        api_key_file: Mounted secret file holding the key (wins over the variable).
        api_key_header: Header name Triton checks (``--http-restricted-api=model-repository:HEADER=...``).
        attempts: Connection attempts to Triton / Kubernetes before failing (exponential backoff).
        backoff_s: First retry delay.
        smoke_test: Run the smoke test after loading (mode ``triton``).
        smoke_texts: Fixed sentences for the smoke test (text models).
        smoke_data: Prepared image dataset whose test-split images are the smoke inputs of image models
            (one per label first, ``smoke_count`` in all); without it a few generated images are used.
        smoke_count: How many images ``smoke_data`` contributes.
        smoke_expected_labels: Labels the smoke inputs must get (optional, one per smoke input).
        smoke_tolerance: Max |logit diff| vs in-process ONNX Runtime (default by precision).
        min_agreement: With the smoke test: smallest fraction of the export's agreement sample (validation inputs
            with the fp32 graph's labels, ``agreement_sample.json``) whose served label must equal the fp32 one;
            below it the version is rolled back (its int8 kernels misbehave on this node's CPU). 0 disables.
        git_repo: Git work tree holding the values file (mode ``gitops``).
        values_file: Values file path inside ``git_repo``.
        values_key: Dotted key of the mapping that receives name/version/repositoryUri.
        git_remote: Remote to push to (name or URL); no push when unset.
        git_branch: Branch to commit on (default: the checked-out branch).
        namespace: Kubernetes namespace (mode ``kserve``).
        isvc_name: InferenceService name (default ``name``; must be a DNS-1123 label).
        kserve_runtime: ServingRuntime name (``None`` lets KServe pick one for the triton format).
        gpus: GPUs per predictor (0 for CPU clusters).
        kubeconfig: Kubeconfig file (else in-cluster, then the default kubeconfig).
        kube_context: Kubeconfig context.
        kube_api_url: Plain API URL (testing against a local API stand-in).
        ready_timeout_s: How long to wait for the InferenceService to become Ready.
        ready_poll_s: Poll interval while waiting.
        registry: Kubeflow Model Registry to record every deployed (or rolled-back) version in; None = off.
        registry_metadata: Extra version metadata (KFP run id, dataset URI, forgetting retention...).
        training_summary: The fine-tuned model's ``training_summary.json``: base model, strategy, data digests and
            primary metric for the registry.
    """

    onnx_dir: Path
    name: str
    mode: str = "triton"
    repository: str = ""
    storage_uri: str | None = None
    options: RepositoryOptions = field(default_factory=RepositoryOptions)
    keep_versions: int = 3
    s3_endpoint_url: str | None = None
    triton_url: str | None = None
    api_key_env: str | None = DEFAULT_KEY_ENV
    api_key_file: str | None = None
    api_key_header: str = RESTRICTED_HEADER
    attempts: int = 5
    backoff_s: float = 0.5
    smoke_test: bool = True
    smoke_texts: list[str] = field(default_factory=lambda: list(DEFAULT_SMOKE_TEXTS))
    smoke_data: Path | None = None
    smoke_count: int = 4
    smoke_expected_labels: list[str] | None = None
    smoke_tolerance: float | None = None
    min_agreement: float = 0.9
    git_repo: Path | None = None
    values_file: str = "helm/values/prod.yaml"
    values_key: str = "model"
    git_remote: str | None = None
    git_branch: str | None = None
    namespace: str = "default"
    isvc_name: str | None = None
    kserve_runtime: str | None = "kserve-tritonserver"
    gpus: int = 1
    kubeconfig: str | None = None
    kube_context: str | None = None
    kube_api_url: str | None = None
    ready_timeout_s: float = 600.0
    ready_poll_s: float = 2.0
    registry: RegistryConfig | None = None
    registry_metadata: dict[str, Any] = field(default_factory=dict)
    training_summary: Path | None = None

    def __post_init__(self) -> None:
        self.onnx_dir = Path(self.onnx_dir)
        validate_model_name(self.name)
        if self.mode not in MODES:
            raise ConfigError(f"mode: expected one of {list(MODES)}, got {self.mode!r}")
        if not self.repository:
            raise ConfigError("repository: a model repository path or s3:// URI is required")
        if self.keep_versions < 1:
            raise ConfigError(f"keep_versions: must be >= 1, got {self.keep_versions}")
        if self.keep_versions < self.options.versions_to_serve:
            raise ConfigError(f"keep_versions: {self.keep_versions} < options.versions_to_serve "
                              f"({self.options.versions_to_serve})")
        if self.attempts < 1 or self.backoff_s < 0:
            raise ConfigError("attempts/backoff_s: need attempts >= 1 and backoff_s >= 0")
        if self.smoke_tolerance is not None and self.smoke_tolerance <= 0:
            raise ConfigError(f"smoke_tolerance: must be > 0, got {self.smoke_tolerance}")
        if not self.smoke_texts:
            raise ConfigError("smoke_texts: at least one sentence is required")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement: must be in [0, 1] (a fraction of inputs), got {self.min_agreement}")
        if self.smoke_count < 1:
            raise ConfigError(f"smoke_count: must be >= 1, got {self.smoke_count}")
        if self.smoke_data is not None:
            self.smoke_data = Path(self.smoke_data)
        # With smoke_data the number of smoke inputs is known once the images are read (image models).
        if (self.smoke_data is None and self.smoke_expected_labels is not None
                and len(self.smoke_expected_labels) != len(self.smoke_texts)):
            raise ConfigError(f"smoke_expected_labels: {len(self.smoke_expected_labels)} labels for "
                              f"{len(self.smoke_texts)} smoke_texts")
        if self.api_key_file and not Path(self.api_key_file).is_file():
            raise ConfigError(f"api_key_file: {self.api_key_file} does not exist; expected a mounted secret file "
                              "holding the model-control key")
        if self.mode == "triton":
            if not self.triton_url:
                raise ConfigError("triton_url: required in mode 'triton' (http://host:port)")
            split_url(self.triton_url)
        if self.mode == "gitops":
            if self.git_repo is None:
                raise ConfigError("git_repo: required in mode 'gitops' (a git work tree)")
            self.git_repo = Path(self.git_repo)
            if not (self.git_repo / ".git").exists():
                raise ConfigError(f"git_repo: {self.git_repo} is not a git work tree (no .git); expected the "
                                  "checkout that holds the values file")
            if not self.values_key or any(not p for p in self.values_key.split(".")):
                raise ConfigError(f"values_key: {self.values_key!r} is not a dotted key")
        if self.mode == "kserve":
            from transferkit.serve.kserve import check_dns_label

            check_dns_label(self.isvc_name or self.name, "isvc_name" if self.isvc_name else "name")
            check_dns_label(self.namespace, "namespace")
            if self.gpus < 0:
                raise ConfigError(f"gpus: must be >= 0, got {self.gpus}")
            if not str(self.storage_uri or self.repository).startswith(("s3://", "gs://", "pvc://", "https://")):
                raise ConfigError("storage_uri: KServe needs s3://, gs://, pvc:// or https:// (set storage_uri when "
                                  "repository is a local mount)")
            monitor_url = self.options.monitor_url
            if monitor_url and not monitor_url.startswith(("http://", "https://")):
                raise ConfigError(f"monitor_url: expected an http(s):// URL for KServe's payload logger, got "
                                  f"{monitor_url!r}")


@dataclass
class DeployResult:
    """What a deployment produced (the deployment record a KFP component outputs)."""

    model_name: str
    version: int
    previous_version: int | None
    mode: str
    endpoint: str | None
    repository_uri: str
    models: list[str]
    smoke_test: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None
    retired_versions: list[int] = field(default_factory=list)
    git_commit: str | None = None
    inference_service: str | None = None
    duration_s: float = 0.0
    registry: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return asdict(self)

    def to_markdown(self) -> str:
        """A short Markdown deployment record."""
        rows = [("model", self.model_name), ("version", self.version), ("previous version", self.previous_version),
                ("mode", self.mode), ("endpoint", self.endpoint or "-"), ("repository", self.repository_uri),
                ("models", ", ".join(self.models)), ("retired versions", self.retired_versions or "-")]
        if self.smoke_test is not None:
            passed = "passed" if self.smoke_test.get("passed") else "failed"
            rows.append(("smoke test", f"{passed} (max |diff| {self.smoke_test.get('max_abs_diff', 0):.3g})"))
        if self.agreement is not None:
            rows.append(("agreement with fp32", f"{self.agreement['agreement']:.1%} of {self.agreement['inputs']} "
                         f"validation inputs (min {self.agreement['min_agreement']:.0%})"))
        if self.git_commit:
            rows.append(("git commit", self.git_commit))
        if self.inference_service:
            rows.append(("InferenceService", self.inference_service))
        lines = [f"# Deployment of `{self.model_name}` version {self.version}", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines) + "\n"


def load_served_export(onnx_dir: Path, variant: str | None) -> Any:
    """The export as deployed: the task's own served export (generation), else the shared classifier one.

    Either offers ``kind``, ``variant``, ``directory``, ``format_version``, ``model_names(name)``,
    ``endpoint(url, name)`` and ``write_tree(name, root, version, options)``.
    """
    task = export_task(onnx_dir) if Path(onnx_dir).is_dir() else None
    served = task.served_export(Path(onnx_dir), variant) if task is not None else None
    return served if served is not None else load_export(onnx_dir, variant=variant)


def _stage(exported: Any, config: DeployConfig, store: RepositoryStore, tmp: Path) -> ModelBundle:
    names = exported.model_names(config.name)
    version = store.next_version(config.name, names)
    written = exported.write_tree(config.name, tmp, version, config.options)
    return ModelBundle(name=config.name, root=tmp, version=version, models=written)


def _record_history(store: RepositoryStore, name: str, version: int, mode: str, status: str) -> None:
    record = store.record(name)
    history = list(record.get("history", []))[-49:]
    history.append({"version": version, "mode": mode, "status": status,
                    "at": datetime.now(UTC).isoformat(timespec="seconds")})
    record["history"] = history
    if status == "serving":
        record["serving_version"] = version
    store.write_record(name, record)


def _check_expected_labels(smoke: SmokeResult, expected: list[str] | None) -> None:
    if expected is None or not smoke.passed:
        return
    wrong = [i for i, (got, want) in enumerate(zip(smoke.labels, expected, strict=True)) if got != want]
    if wrong:
        smoke.passed = False
        smoke.reason = (f"labels for smoke inputs {wrong} are {[smoke.labels[i] for i in wrong]}, expected "
                        f"{[expected[i] for i in wrong]}")


def _rollback_triton(control: TritonControl, publication: Publication, names: list[str],
                     previous: int | None) -> str:
    publication.undo()
    try:
        if previous is None:
            for model in reversed(names):
                if control.is_ready(model):
                    control.unload(model)
            return "no previous version; new models unloaded"
        for model in names:
            control.load(model)
        if not control.is_ready(names[-1], previous):
            return f"rollback reloaded but version {previous} is not ready"
        return f"version {previous} still serving"
    except TransferkitError as exc:
        return f"rollback incomplete: {exc}"


def _smoke_images(config: DeployConfig, exported: Any) -> list[bytes] | None:
    """Smoke inputs of an image model, read before anything is published (None: generated images)."""
    if exported.kind != "image" or not config.smoke_test:
        return None
    if config.smoke_data is None:
        if config.smoke_expected_labels is not None:
            raise ConfigError("smoke_expected_labels: for an image model set smoke_data too (the generated "
                              "smoke images have no true labels)")
        return None
    images, _ = smoke_images_from_data(config.smoke_data, config.smoke_count)
    expected = config.smoke_expected_labels
    if expected is not None and len(expected) != len(images):
        raise ConfigError(f"smoke_expected_labels: {len(expected)} labels for {len(images)} smoke images "
                          f"from smoke_data {config.smoke_data}")
    return images


def _deploy_triton(config: DeployConfig, exported: Any, store: RepositoryStore) -> DeployResult:
    assert config.triton_url is not None
    smoke_images = _smoke_images(config, exported)
    api_key = read_api_key(config.api_key_env, config.api_key_file)
    with TritonControl(config.triton_url, api_key=api_key, api_key_header=config.api_key_header,
                       attempts=config.attempts, backoff_s=config.backoff_s) as control:
        # Reachability and the model-control key are checked before anything is published.
        control.wait_live()
        control.check_control_access()
        with store.lock(config.name), tempfile.TemporaryDirectory(prefix="tk-deploy-") as tmp:
            bundle = _stage(exported, config, store, Path(tmp))
            ready = control.ready_versions(config.name)
            previous = ready[-1] if ready else None
            publication = store.publish(bundle)
            smoke: Any = None
            agreement: AgreementResult | None = None
            try:
                for model in bundle.models:  # composing models first, the ensemble last
                    control.load(model)
                if not control.is_ready(config.name, bundle.version):
                    raise DeploymentError(f"{config.name} version {bundle.version} is not ready after loading")
                if config.smoke_test and not isinstance(exported, ExportedModel):  # the task's own smoke test
                    smoke = exported.smoke_test(config.triton_url, config.name, bundle.version, config.smoke_texts)
                    if not smoke.passed:
                        raise DeploymentError(f"smoke test failed: {smoke.reason}")
                elif config.smoke_test and exported.kind in ("text", "image"):
                    smoke = smoke_test(control, exported, config.name, bundle.version, config.smoke_texts,
                                       config.smoke_tolerance, images=smoke_images)
                    _check_expected_labels(smoke, config.smoke_expected_labels)
                    if not smoke.passed:
                        raise DeploymentError(f"smoke test failed: {smoke.reason}")
                    if config.min_agreement > 0:
                        agreement = check_agreement(control, exported, config.name, bundle.version,
                                                    config.min_agreement)
                        if agreement is not None and not agreement.passed:
                            raise DeploymentError(f"agreement check failed: {agreement.reason}")
            except TransferkitError as exc:
                outcome = _rollback_triton(control, publication, bundle.models, previous)
                _record_history(store, config.name, bundle.version, "triton", "rolled_back")
                raise DeploymentError(f"{config.name} version {bundle.version} not deployed: {exc}; "
                                      f"rolled back ({outcome})") from exc
            retired = store.prune(bundle.models, config.keep_versions, protect=bundle.version)
            _record_history(store, config.name, bundle.version, "triton", "serving")
    return DeployResult(
        model_name=config.name, version=bundle.version, previous_version=previous, mode="triton",
        endpoint=exported.endpoint(config.triton_url, config.name),
        repository_uri=config.storage_uri or store.uri, models=bundle.models,
        smoke_test=smoke.to_dict() if smoke else None, retired_versions=retired,
        agreement=agreement.to_dict() if agreement else None,
    )


def _deploy_gitops(config: DeployConfig, exported: Any, store: RepositoryStore) -> DeployResult:
    from transferkit.serve.gitops import commit_values

    assert config.git_repo is not None
    uri = config.storage_uri or store.uri
    with store.lock(config.name), tempfile.TemporaryDirectory(prefix="tk-deploy-") as tmp:
        bundle = _stage(exported, config, store, Path(tmp))
        previous = store.record(config.name).get("serving_version")
        publication = store.publish(bundle)
        message = (f"deploy {config.name} version {bundle.version}\n\n"
                   f"Model repository: {uri}\nModels: {', '.join(bundle.models)}\n"
                   f"Source: {exported.directory.name} ({exported.variant} graph)\nCommitted by transferkit.")
        try:
            commit = commit_values(config.git_repo, config.values_file, config.values_key,
                                   {"name": config.name, "version": bundle.version, "repositoryUri": uri},
                                   message, remote=config.git_remote, branch=config.git_branch)
        except TransferkitError:
            publication.undo()
            raise
        retired = store.prune(bundle.models, config.keep_versions, protect=bundle.version)
        _record_history(store, config.name, bundle.version, "gitops", "serving")
    return DeployResult(
        model_name=config.name, version=bundle.version, previous_version=previous, mode="gitops", endpoint=None,
        repository_uri=uri, models=bundle.models, retired_versions=retired, git_commit=commit.sha,
    )


def monitor_events_url(monitor_url: str) -> str | None:
    """Where KServe's payload logger posts for a ``transferkit monitor`` at ``monitor_url`` (None: no logger)."""
    return f"{monitor_url.rstrip('/')}/v1/events" if monitor_url else None


def _deploy_kserve(config: DeployConfig, exported: Any, store: RepositoryStore) -> DeployResult:
    from transferkit.serve.kserve import KServeDeployer, KServeTarget, build_inference_service, service_url

    uri = config.storage_uri or store.uri
    target = KServeTarget(name=config.isvc_name or config.name, namespace=config.namespace,
                          runtime=config.kserve_runtime, gpus=config.gpus, kubeconfig=config.kubeconfig,
                          context=config.kube_context, api_url=config.kube_api_url,
                          ready_timeout_s=config.ready_timeout_s, poll_s=config.ready_poll_s,
                          attempts=config.attempts, logger_url=monitor_events_url(config.options.monitor_url))
    deployer = KServeDeployer(target)
    deployer.get()  # reachability and credentials before anything is published
    with store.lock(config.name), tempfile.TemporaryDirectory(prefix="tk-deploy-") as tmp:
        bundle = _stage(exported, config, store, Path(tmp))
        previous = store.record(config.name).get("serving_version")
        publication = store.publish(bundle)
        body = build_inference_service(target, uri, config.name, bundle.version)
        prior: dict[str, Any] | None = None
        applied = False
        try:
            response, prior = deployer.apply(body)
            applied = True
            ready = deployer.wait_ready(response)
        except TransferkitError as exc:
            outcome = "nothing applied"
            if applied:
                try:
                    deployer.restore(prior)
                    outcome = "previous spec restored" if prior else "new InferenceService deleted"
                except TransferkitError as restore_exc:
                    outcome = f"restore failed: {restore_exc}"
            publication.undo()
            raise DeploymentError(f"{config.name} version {bundle.version} not deployed: {exc}; {outcome}") from exc
        retired = store.prune(bundle.models, config.keep_versions, protect=bundle.version)
        _record_history(store, config.name, bundle.version, "kserve", "serving")
    url = service_url(ready)
    return DeployResult(
        model_name=config.name, version=bundle.version, previous_version=previous, mode="kserve",
        endpoint=exported.endpoint(url, config.name) if url else None, repository_uri=uri, models=bundle.models,
        retired_versions=retired, inference_service=f"{target.namespace}/{target.name}",
    )


def deploy_model(config: DeployConfig) -> DeployResult:
    """Publish ``config.onnx_dir`` as a new version and roll it out in ``config.mode``.

    Returns:
        The deployment record.

    Raises:
        ServingError: Bad export directory or repository.
        ServerUnavailableError: Triton/Kubernetes/S3 unreachable after bounded retries.
        AuthError: Missing or rejected credentials (model-control key, S3, Git).
        DeploymentError: The rollout failed; the previous version remains in service.
    """
    started = time.monotonic()
    exported = load_served_export(config.onnx_dir, config.options.variant)
    store = open_store(config.repository, s3_endpoint_url=config.s3_endpoint_url)
    store.check_access()
    handler = {"triton": _deploy_triton, "gitops": _deploy_gitops, "kserve": _deploy_kserve}[config.mode]
    try:
        result = handler(config, exported, store)
    except DeploymentError as exc:
        if config.registry is not None:
            _register_rolled_back(config, exported, store, exc)
        raise
    result.duration_s = round(time.monotonic() - started, 3)
    logger.info("Deployed %s version %d (%s mode) in %.1fs", result.model_name, result.version, result.mode,
                result.duration_s)
    if config.registry is not None:
        result.registry = _register(config, exported, result.version, result.repository_uri, result.models)
    return result


def _register(config: DeployConfig, exported: Any, version: int, uri: str, models: list[str],
              rolled_back: str | None = None) -> dict[str, Any]:
    """Record ``version`` in the Model Registry (archived with the reason when it was rolled back)."""
    from transferkit.serve.registry import (
        REASON_KEY,
        ROLLED_BACK,
        SERVING,
        STATUS_KEY,
        ModelRegistry,
        deployment_metadata,
    )

    assert config.registry is not None
    metadata = deployment_metadata(config.onnx_dir, exported.variant, config.options.instance_kind,
                                   training_summary=config.training_summary, extra=config.registry_metadata)
    metadata.update({"deploy_mode": config.mode, "triton_models": ",".join(models),
                     STATUS_KEY: ROLLED_BACK if rolled_back else SERVING, REASON_KEY: rolled_back or ""})
    registry = ModelRegistry(config.registry)
    record = registry.register(config.name, str(version), uri, format_version=exported.format_version,
                               description=f"{config.name} version {version} ({exported.variant}, {config.mode})",
                               metadata=metadata, archived=rolled_back is not None)
    logger.info("Registered %s version %d in the model registry (%s)", config.name, version, record["status"])
    return record


def _register_rolled_back(config: DeployConfig, exported: Any, store: RepositoryStore,
                          error: DeploymentError) -> None:
    """Record the version the deploy step just rolled back; never hides the deployment error."""
    history = store.record(config.name).get("history") or []
    if not history or history[-1].get("status") != "rolled_back":
        return  # nothing was rolled out (the failure came before a version existed)
    version = int(history[-1]["version"])
    try:
        _register(config, exported, version, config.storage_uri or store.uri, [], rolled_back=str(error)[:500])
    except TransferkitError as exc:
        logger.error("Could not record rolled-back %s version %d in the model registry: %s", config.name, version,
                     exc)
