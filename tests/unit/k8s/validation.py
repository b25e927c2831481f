"""Strict validation of Kubernetes objects for tests: built-in kinds and the custom resources we use.

Built-in kinds go through ``kubernetes-validate`` in strict mode (unknown fields fail) for
:data:`KUBE_VERSION`; custom resources through the hand-written schemas in ``tests/schemas``
(see its README). An object whose schema is unknown is an error, never silently accepted.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBE_VERSION = "1.30"
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
_BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
                   "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io"}


class ManifestError(AssertionError):
    """An object does not validate; the message names the object and the failing path."""


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


@functools.cache
def custom_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The schema of a custom resource from ``tests/schemas`` (``<kind>.<group>.<version>.json``)."""
    group, version = api_version.split("/")
    path = SCHEMAS_DIR / f"{kind.lower()}.{group}.{version}.json"
    if not path.exists():
        raise ManifestError(f"no schema for {kind} ({api_version}) under {SCHEMAS_DIR}")
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def validate_manifest(obj: dict[str, Any]) -> None:
    """Validate one object strictly.

    Raises:
        ManifestError: The object fails its schema (the message names the object and field path).
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        raise ManifestError(f"object without apiVersion/kind: {str(obj)[:200]}")
    if _group(api_version) in _BUILTIN_GROUPS:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ManifestError(f"{_name(obj)}: {path}: {exc.message}") from None
        return
    validator = jsonschema.Draft202012Validator(custom_schema(api_version, kind))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        details = "; ".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:5])
        raise ManifestError(f"{_name(obj)}: {details}")


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``text``."""
    return [doc for doc in yaml.safe_load_all(text) if doc]
