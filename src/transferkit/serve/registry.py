"""Kubeflow Model Registry: every deployed version registered with its lineage, through the official client.

The client is the Kubeflow SDK's ``kubeflow.hub.ModelRegistryClient`` (over the ``model-registry`` package's REST
client). A deployed version becomes a model version: registered model = the deployed name, version = the Triton
version, artifact URI = the published repository path or S3 URI, format ``onnx`` (format version = the ONNX opset)
and, as version metadata, the variant served and the lineage in :func:`deployment_metadata`. A version rolled back
by the deploy step is recorded too, archived with ``transferkit.status = rolled_back`` and the reason.

Configured by a URL and a bearer token read from a mounted Secret file or an environment variable (never logged);
registration is off when no URL is given.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from transferkit.errors import ConfigError, RegistryError, ServerUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = "TRANSFERKIT_REGISTRY_TOKEN"
STATUS_KEY = "transferkit.status"
REASON_KEY = "transferkit.reason"
SERVING, ROLLED_BACK = "serving", "rolled_back"
MetadataValue = str | int | float | bool


@dataclass
class RegistryConfig:
    """Where and how to reach the Model Registry.

    Attributes:
        url: ``http(s)://host[:port]`` of the Model Registry REST service.
        token_env: Environment variable holding the bearer token.
        token_file: Mounted Secret file holding the token (wins over the variable).
        author: Author/owner written on registered models and versions.
        custom_ca: PEM bundle to verify an ``https`` registry with a private CA.

    """

    url: str
    token_env: str | None = DEFAULT_TOKEN_ENV
    token_file: str | None = None
    author: str = "transferkit"
    custom_ca: str | None = None

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"registry_url: expected http(s)://host[:port], got {self.url!r}")
        try:
            _ = parsed.port
        except ValueError:
            raise ConfigError(f"registry_url: port must be 1-65535 in {self.url!r}") from None
        if parsed.path.strip("/"):
            raise ConfigError(f"registry_url: give the service root without a path, got {self.url!r}")
        if not self.author.strip():
            raise ConfigError("registry_author: must not be empty")

    def token(self) -> str | None:
        """The bearer token from the Secret file or the variable, or None.

        Raises:
            ConfigError: The token file cannot be read or is empty.

        """
        if self.token_file:
            try:
                value = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"registry_token_file: cannot read {self.token_file} ({exc.strerror})") from None
            if not value:
                raise ConfigError(f"registry_token_file: {self.token_file} is empty")
            return value
        return (os.environ.get(self.token_env) or "").strip() or None if self.token_env else None


def _wrap(action: str, exc: Exception, url: str) -> Exception:
    """One-line typed error for a failed client call (the client raises aiohttp/ValueError/StoreError)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__module__.startswith("aiohttp") or isinstance(exc, OSError):
        return ServerUnavailableError(f"model registry {url}: unreachable while {action} ({text})")
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return RegistryError(f"model registry {url}: credentials rejected while {action} (HTTP {status}); set "
                             f"the token in ${DEFAULT_TOKEN_ENV} or --registry-token-file")
    return RegistryError(f"model registry {url}: {action} failed ({text[:300]})")


class ModelRegistry:
    """Thin layer over ``kubeflow.hub.ModelRegistryClient`` with typed one-line errors."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self._client = self._call("connecting", self._connect)

    def _connect(self) -> Any:
        import warnings

        from kubeflow.hub import ModelRegistryClient

        parsed = urlparse(self.config.url)
        base = f"{parsed.scheme}://{parsed.hostname}"
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        with warnings.catch_warnings():
            # "User access token is missing" is expected for registries without authentication.
            warnings.simplefilter("ignore", UserWarning)
            logging.getLogger("model-registry").setLevel(logging.ERROR)
            return ModelRegistryClient(base, port, author=self.config.author, is_secure=parsed.scheme == "https",
                                       user_token=self.config.token(), custom_ca=self.config.custom_ca)

    def _call(self, action: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, RegistryError):
            raise
        except Exception as exc:
            raise _wrap(action, exc, self.config.url) from None

    def register(self, name: str, version: str, uri: str, *, format_version: str, description: str,
                 metadata: Mapping[str, MetadataValue], archived: bool = False) -> dict[str, Any]:
        """Register ``name`` version ``version`` (the registered model is created on first use).

        Raises:
            RegistryError: The version exists already or the registry refused the call.
            ServerUnavailableError: The registry cannot be reached.

        """
        self._call(f"registering {name} version {version}", self._client.register_model, name, uri,
                   version=version, model_format_name="onnx", model_format_version=format_version,
                   version_description=description, metadata=dict(metadata))
        if archived:
            return self.mark(name, version, dict(metadata).get(STATUS_KEY, ROLLED_BACK),  # type: ignore[arg-type]
                             str(dict(metadata).get(REASON_KEY, "")), archive=True)
        return self.show(name, version)

    def mark(self, name: str, version: str, status: str, reason: str, *, archive: bool) -> dict[str, Any]:
        """Set ``transferkit.status``/``reason`` on a version; ``archive`` also sets its state to ARCHIVED."""
        from model_registry.types import ModelVersionState

        current = self._call(f"reading {name} version {version}", self._client.get_model_version, name, version)
        current.custom_properties = {**(current.custom_properties or {}), STATUS_KEY: status, REASON_KEY: reason}
        if archive:
            current.state = ModelVersionState.ARCHIVED
        self._call(f"marking {name} version {version}", self._client.update_model_version, current)
        return self.show(name, version)

    def list_models(self) -> list[dict[str, Any]]:
        """Registered models with their versions (name, state, status)."""
        models = []
        for model in self._call("listing models", lambda: list(self._client.list_models())):
            versions = self._call(f"listing versions of {model.name}",
                                  lambda m=model: list(self._client.list_model_versions(m.name)))
            models.append({"name": model.name, "id": model.id, "owner": model.owner,
                           "versions": [_version_dict(v) for v in versions]})
        return models

    def show(self, name: str, version: str | None = None) -> dict[str, Any]:
        """One version (the newest when ``version`` is None) with its artifact and metadata.

        Raises:
            RegistryError: No such model or version.

        """
        if version is None:
            versions = self._call(f"listing versions of {name}", lambda: list(self._client.list_model_versions(name)))
            if not versions:
                raise RegistryError(f"model registry: {name} has no versions")
            version = max(versions, key=lambda v: (_numeric(v.name), v.name)).name
        found = self._call(f"reading {name} version {version}", self._client.get_model_version, name, version)
        artifact = self._call(f"reading the artifact of {name} version {version}", self._client.get_model_artifact,
                              name, version)
        return {**_version_dict(found), "model": name,
                "artifact": {"uri": artifact.uri, "format": artifact.model_format_name,
                             "format_version": artifact.model_format_version}}


def _numeric(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _version_dict(version: Any) -> dict[str, Any]:
    props = dict(version.custom_properties or {})
    return {"version": version.name, "id": version.id, "state": getattr(version.state, "value", version.state),
            "status": props.get(STATUS_KEY), "author": version.author, "description": version.description,
            "metadata": props}


# ----------------------------------------------------------------------------------------------- metadata


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def parse_metadata(items: list[str]) -> dict[str, MetadataValue]:
    """``KEY=VALUE`` pairs (numbers and true/false typed) for the version metadata.

    Raises:
        ConfigError: An item without ``=`` or with an empty key.

    """
    out: dict[str, MetadataValue] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"registry_metadata: expected KEY=VALUE, got {item!r}")
        text = value.strip()
        parsed: MetadataValue = text
        if text.lower() in ("true", "false"):
            parsed = text.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    parsed = kind(text)
                    break
                except ValueError:
                    continue
        out[key.strip()] = parsed
    return out


def deployment_metadata(onnx_dir: Path, variant: str, instance_kind: str, *, training_summary: Path | None = None,
                        extra: Mapping[str, MetadataValue] | None = None) -> dict[str, MetadataValue]:
    """Lineage of a deployed version: export gates, the training run and the caller's keys.

    From the export directory's ``metrics.json``: ONNX parity (max |diff|, passed), the served variant's accuracy
    drop and whether it passed the int8 gate, the export target and CPU recipe. From ``training_summary.json``
    (when given): base model and its resolved path, strategy, dataset directory and split digests, primary
    validation metric, retention after ``--preserve-source``. ``extra`` (KFP run id, dataset URI, forgetting
    retention... as ``KEY=VALUE``) is added last and wins.
    """
    meta: dict[str, MetadataValue] = {"variant": variant, "target": instance_kind}
    export = _read_json(onnx_dir / "metrics.json")
    if export:
        meta["export_target"] = str(export.get("target", ""))
        if isinstance(export.get("parity_max_abs_diff"), int | float):
            meta["parity_max_abs_diff"] = float(export["parity_max_abs_diff"])
        meta["parity_passed"] = bool(export.get("passed", False))
        served = (export.get("variants") or {}).get(variant) or {}
        if isinstance(served.get("accuracy"), int | float):
            meta["accuracy"] = float(served["accuracy"])
        if isinstance(served.get("accuracy_drop_pt"), int | float):
            meta["accuracy_drop_pt"] = float(served["accuracy_drop_pt"])
        if variant != "fp32":
            meta["int8_gate_passed"] = bool(served.get("kept", False))
        recipe = export.get("int8_recipe") or {}
        if isinstance(recipe, dict) and recipe.get("name"):
            meta["int8_recipe"] = str(recipe["name"])
    summary = _read_json(training_summary) if training_summary is not None else {}
    if summary:
        model, data, best = summary.get("model") or {}, summary.get("data") or {}, summary.get("best") or {}
        meta.update({"base_model": str(model.get("reference", "")), "base_model_path": str(model.get("path", "")),
                     "strategy": str(summary.get("strategy", "")), "dataset_dir": str(data.get("dir", ""))})
        for split, digest in (data.get("sha256") or {}).items():
            meta[f"dataset_sha256_{split}"] = str(digest)
        if best.get("metric") and isinstance(best.get("value"), int | float):
            meta["primary_metric"] = str(best["metric"])
            meta["primary_metric_value"] = float(best["value"])
        preserve = summary.get("preserve_source") or {}
        if isinstance(preserve, dict) and isinstance(preserve.get("retention"), int | float):
            meta["forgetting_retention"] = float(preserve["retention"])
    meta.update(dict(extra or {}))
    return meta
