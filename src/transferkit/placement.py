"""Cluster placement for the pipeline, read from a YAML file (no kfp import: pure configuration).

``transferkit pipeline compile --config FILE`` reads this file and applies it to the tasks with
kfp-kubernetes. Example (see ``pipelines/transfer_learning/placement/gpu-cluster.yaml``)::

    defaults: {cpu_request: "1", memory_request: 4Gi, image_pull_secrets: [regcred]}
    steps:
      fine_tune:
        accelerator: {type: nvidia.com/gpu, count: 1}
        node_selector: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
        shm_size: 16Gi
        retries: 3
        pvcs: [{name: transferkit-checkpoints, mount_path: /mnt/checkpoints}]
    secrets:
      - {name: s3-credentials, steps: [data_prep, deploy_triton],
         env: {AWS_ACCESS_KEY_ID: access_key, AWS_SECRET_ACCESS_KEY: secret_key}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from transferkit.errors import ConfigError

STEPS = ("data_prep", "tune_search", "fine_tune", "evaluate", "forgetting_check", "onnx_quantize", "deploy_triton",
         "select_strategy", "deploy_gate", "run_summary", "prune_model")
NEVER_CACHED = ("deploy_triton",)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _quantity(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not _QUANTITY.match(text):
        raise ConfigError(f"{where}: {text!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    return text


@dataclass
class Toleration:
    """A pod toleration."""

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None

    def __post_init__(self) -> None:
        if self.operator not in ("Equal", "Exists"):
            raise ConfigError(f"toleration.operator: {self.operator!r} must be Equal or Exists")
        if self.effect is not None and self.effect not in _EFFECTS:
            raise ConfigError(f"toleration.effect: {self.effect!r} must be one of {', '.join(_EFFECTS)}")


@dataclass
class PvcMount:
    """A PersistentVolumeClaim mounted into a step."""

    name: str
    mount_path: str

    def __post_init__(self) -> None:
        if not self.name or not self.mount_path.startswith("/"):
            raise ConfigError(
                f"pvcs: name must be set and mount_path absolute (got {self.name!r}, {self.mount_path!r})"
            )


@dataclass
class StepPlacement:
    """Placement and runtime settings of one step (every field optional)."""

    accelerator_type: str | None = None
    accelerator_count: int | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    shm_size: str | None = None
    pvcs: list[PvcMount] = field(default_factory=list)
    retries: int | None = None
    timeout_seconds: int | None = None
    caching: bool | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def merged_over(self, base: StepPlacement) -> StepPlacement:
        """Return this placement with unset fields taken from ``base``."""
        merged = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(base, f.name)
            if isinstance(mine, dict):
                merged[f.name] = {**theirs, **mine}
            elif isinstance(mine, list):
                merged[f.name] = mine or theirs
            else:
                merged[f.name] = theirs if mine is None else mine
        return StepPlacement(**merged)


@dataclass
class SecretEnv:
    """A Kubernetes Secret exposed to some steps as environment variables."""

    name: str
    env: dict[str, str]
    steps: list[str]


@dataclass
class PlacementConfig:
    """Placement of every pipeline step on a cluster."""

    defaults: StepPlacement = field(default_factory=StepPlacement)
    steps: dict[str, StepPlacement] = field(default_factory=dict)
    secrets: list[SecretEnv] = field(default_factory=list)

    def for_step(self, step: str) -> StepPlacement:
        """Effective placement of ``step`` (its own settings over the defaults; deploy is never cached)."""
        placement = self.steps.get(step, StepPlacement()).merged_over(self.defaults)
        if step in NEVER_CACHED:
            placement.caching = False
        return placement

    def secrets_for(self, step: str) -> list[SecretEnv]:
        """Secrets whose environment variables ``step`` receives."""
        return [s for s in self.secrets if step in s.steps]


def _step_placement(raw: Any, where: str) -> StepPlacement:
    if raw is None:
        return StepPlacement()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(StepPlacement)} | {"accelerator"}
    unknown = sorted(set(raw) - known)
    if unknown:
        expected = ", ".join(sorted(known))
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; expected some of {expected}")
    data = dict(raw)
    accelerator = data.pop("accelerator", None)
    if accelerator is not None:
        if not isinstance(accelerator, dict) or "type" not in accelerator:
            raise ConfigError(f"{where}.accelerator: expected {{type: nvidia.com/gpu, count: N}}")
        data["accelerator_type"] = str(accelerator["type"])
        data["accelerator_count"] = int(accelerator.get("count", 1))
        if data["accelerator_count"] < 1:
            raise ConfigError(f"{where}.accelerator.count: must be >= 1")
    for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size"):
        data[key] = _quantity(data.get(key), f"{where}.{key}")
    try:
        data["tolerations"] = [Toleration(**t) for t in data.get("tolerations") or []]
        data["pvcs"] = [PvcMount(**p) for p in data.get("pvcs") or []]
    except TypeError as exc:
        raise ConfigError(f"{where}: malformed toleration or pvc entry ({exc})") from exc
    data["node_selector"] = {str(k): str(v) for k, v in (data.get("node_selector") or {}).items()}
    data["env"] = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
    data["image_pull_secrets"] = [str(s) for s in data.get("image_pull_secrets") or []]
    for key in ("retries", "timeout_seconds"):
        if data.get(key) is not None and int(data[key]) < 0:
            raise ConfigError(f"{where}.{key}: must be >= 0")
    return StepPlacement(**data)


def load_placement(path: str | Path) -> PlacementConfig:
    """Read and validate a placement YAML file.

    Raises:
        ConfigError: The file is missing, not YAML, or a field is invalid (the message names it).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: placement config not found")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    unknown = sorted(set(raw) - {"defaults", "steps", "secrets"})
    if unknown:
        raise ConfigError(f"{file}: unknown top-level field(s) {', '.join(unknown)}; expected defaults, steps, secrets")
    steps_raw = raw.get("steps") or {}
    bad_steps = sorted(set(steps_raw) - set(STEPS))
    if bad_steps:
        raise ConfigError(f"{file}: steps.{bad_steps[0]} is not a pipeline step; expected one of {', '.join(STEPS)}")
    secrets = []
    for i, secret in enumerate(raw.get("secrets") or []):
        if not isinstance(secret, dict) or not {"name", "env", "steps"} <= set(secret):
            raise ConfigError(f"{file}: secrets[{i}] needs name, env (ENV_VAR: secret_key) and steps")
        for step in secret["steps"]:
            if step not in STEPS:
                raise ConfigError(f"{file}: secrets[{i}].steps: {step!r} is not a pipeline step")
        secrets.append(SecretEnv(str(secret["name"]), {str(k): str(v) for k, v in secret["env"].items()},
                                 list(secret["steps"])))
    return PlacementConfig(
        defaults=_step_placement(raw.get("defaults"), f"{file}: defaults"),
        steps={name: _step_placement(value, f"{file}: steps.{name}") for name, value in steps_raw.items()},
        secrets=secrets,
    )
