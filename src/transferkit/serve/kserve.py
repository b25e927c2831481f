"""KServe deploy: create or patch an ``InferenceService`` (Triton runtime) and wait until it is Ready.

The predictor uses the ``triton`` model format with ``storageUri`` pointing at the model repository
root; the published version is put into the predictor's annotations so that every new version is a
spec change and KServe rolls out a new revision. With a monitor URL the predictor gets KServe's payload
``logger`` (mode ``all``) posting CloudEvents to ``<monitor>/v1/events``. Readiness means the ``Ready``
condition is ``True`` for the current generation.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from transferkit.errors import AuthError, ConfigError, DeploymentError, ServerUnavailableError

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VERSION_ANNOTATION = "serving.transferkit.io/model-version"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_dns_label(value: str, field_name: str) -> str:
    """Kubernetes object names for InferenceServices must be DNS-1123 labels.

    Raises:
        ConfigError: Not a DNS label.
    """
    if not _DNS_LABEL.match(value or ""):
        raise ConfigError(f"{field_name}: {value!r} must be a DNS-1123 label (lowercase letters, digits, '-')")
    return value


@dataclass
class KServeTarget:
    """Where and how the InferenceService is created."""

    name: str
    namespace: str = "default"
    runtime: str | None = "kserve-tritonserver"
    service_account: str | None = None
    gpus: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = None  # plain API URL (tests against kmock); else kubeconfig/in-cluster
    ready_timeout_s: float = 600.0
    poll_s: float = 2.0
    attempts: int = 5
    logger_url: str | None = None  # KServe payload logger: CloudEvents of requests and responses to this URL
    logger_mode: str = "all"


def build_inference_service(target: KServeTarget, storage_uri: str, model_name: str, version: int) -> dict[str, Any]:
    """The ``InferenceService`` object for one model version."""
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    if target.gpus > 0:
        resources["limits"]["nvidia.com/gpu"] = str(target.gpus)
    model: dict[str, Any] = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "storageUri": storage_uri,
        "args": ["--model-control-mode=explicit", f"--load-model={model_name}", "--strict-readiness=true"],
        "resources": resources,
    }
    if target.runtime:
        model["runtime"] = target.runtime
    predictor: dict[str, Any] = {
        "minReplicas": target.min_replicas,
        "maxReplicas": target.max_replicas,
        "annotations": {VERSION_ANNOTATION: str(version)},
        "model": model,
    }
    if target.service_account:
        predictor["serviceAccountName"] = target.service_account
    if target.logger_url:
        # Both halves of every call: the monitor pairs them by ce-id (transferkit.monitor.events).
        predictor["logger"] = {"mode": target.logger_mode, "url": target.logger_url}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": target.name,
            "namespace": target.namespace,
            "labels": {"app.kubernetes.io/managed-by": "transferkit", "app.kubernetes.io/name": model_name},
            "annotations": {VERSION_ANNOTATION: str(version)},
        },
        "spec": {"predictor": predictor},
    }


def _api(target: KServeTarget) -> Any:
    from kubernetes import client, config

    if target.api_url:
        configuration = client.Configuration()
        configuration.host = target.api_url
        return client.CustomObjectsApi(client.ApiClient(configuration))
    try:
        if target.kubeconfig or target.context:
            config.load_kube_config(config_file=target.kubeconfig, context=target.context)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except Exception as exc:
        raise ConfigError(f"kubeconfig: cannot load Kubernetes credentials ({str(exc).splitlines()[0]})") from exc
    return client.CustomObjectsApi()


def _is_ready(obj: dict[str, Any], min_generation: int | None = None) -> bool:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    generation = (obj.get("metadata") or {}).get("generation")
    wanted = max(g for g in (generation, min_generation, 0) if g is not None)
    # An API server bumps metadata.generation on every spec change; the controller reports the
    # generation it has reconciled. Without both (API stand-ins), the Ready condition decides alone.
    if observed is not None and wanted and int(observed) < int(wanted):
        return False
    return any(c.get("type") == "Ready" and str(c.get("status")) == "True" for c in status.get("conditions") or [])


class KServeDeployer:
    """Create/patch, wait, and restore an InferenceService."""

    def __init__(self, target: KServeTarget) -> None:
        self.target = target
        self.api = _api(target)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        delay = 0.5
        for attempt in range(1, self.target.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status in (401, 403):
                    raise AuthError(f"Kubernetes API rejected {what} (HTTP {exc.status} {exc.reason})") from exc
                if exc.status and exc.status < 500:
                    raise
                last = f"HTTP {exc.status} {exc.reason}"
            except (Urllib3Error, OSError) as exc:
                last = type(exc).__name__
            if attempt < self.target.attempts:
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise ServerUnavailableError(
            f"Kubernetes API unreachable for {what} after {self.target.attempts} attempts ({last})"
        )

    def get(self) -> dict[str, Any] | None:
        """The current InferenceService, or None."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call("get InferenceService", self.api.get_namespaced_custom_object, GROUP, VERSION,
                              self.target.namespace, PLURAL, self.target.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise DeploymentError(f"get InferenceService {self.target.name}: HTTP {exc.status} {exc.reason}") from exc

    def apply(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Create or merge-patch; return (new object, previous object or None)."""
        from kubernetes.client.exceptions import ApiException

        previous = self.get()
        try:
            if previous is None:
                created = self._call("create InferenceService", self.api.create_namespaced_custom_object, GROUP,
                                     VERSION, self.target.namespace, PLURAL, body)
                logger.info("Created InferenceService %s/%s", self.target.namespace, self.target.name)
                return created, None
            patch = {"metadata": {"labels": body["metadata"]["labels"],
                                  "annotations": body["metadata"]["annotations"]}, "spec": body["spec"]}
            patched = self._call("patch InferenceService", self.api.patch_namespaced_custom_object, GROUP, VERSION,
                                 self.target.namespace, PLURAL, self.target.name, patch)
            logger.info("Patched InferenceService %s/%s", self.target.namespace, self.target.name)
            return patched, copy.deepcopy(previous)
        except ApiException as exc:
            raise DeploymentError(f"apply InferenceService {self.target.name}: HTTP {exc.status} {exc.reason}") from exc

    def wait_ready(self, applied: dict[str, Any] | None = None) -> dict[str, Any]:
        """Poll until Ready for the generation that ``applied`` (the apply response) carries.

        Raises:
            DeploymentError: Not Ready within ``ready_timeout_s`` (last condition message included).
        """
        min_generation = ((applied or {}).get("metadata") or {}).get("generation")
        deadline = time.monotonic() + self.target.ready_timeout_s
        obj: dict[str, Any] | None = None
        while True:
            # A freshly applied spec is never Ready at once: wait one poll before the first look.
            time.sleep(min(self.target.poll_s, max(0.0, deadline - time.monotonic())))
            obj = self.get()
            if obj is not None and _is_ready(obj, min_generation):
                return obj
            if time.monotonic() >= deadline:
                break
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        detail = "; ".join(f"{c.get('type')}={c.get('status')} {c.get('message', '')}".strip() for c in conditions)
        raise DeploymentError(f"InferenceService {self.target.namespace}/{self.target.name} not Ready after "
                              f"{self.target.ready_timeout_s:.0f}s ({detail or 'no status conditions'})")

    def restore(self, previous: dict[str, Any] | None) -> None:
        """Put back the previous spec, or delete a service this deploy created."""
        if previous is None:
            self._call("delete InferenceService", self.api.delete_namespaced_custom_object, GROUP, VERSION,
                       self.target.namespace, PLURAL, self.target.name)
            logger.info("Deleted InferenceService %s (created by the failed deploy)", self.target.name)
            return
        meta = previous.get("metadata") or {}
        patch = {"metadata": {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}},
                 "spec": previous.get("spec") or {}}
        self._call("restore InferenceService", self.api.patch_namespaced_custom_object, GROUP, VERSION,
                   self.target.namespace, PLURAL, self.target.name, patch)
        logger.info("Restored the previous InferenceService spec of %s", self.target.name)


def service_url(obj: dict[str, Any]) -> str | None:
    """The InferenceService's base URL (``status.url``), or None before it has one."""
    url = (obj.get("status") or {}).get("url")
    return str(url).rstrip("/") if url else None


def endpoint_of(obj: dict[str, Any], model_name: str) -> str | None:
    """The inference URL from ``status.url``."""
    url = (obj.get("status") or {}).get("url")
    return f"{url.rstrip('/')}/v2/models/{model_name}/infer" if url else None
