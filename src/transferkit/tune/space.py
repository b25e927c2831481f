"""The search-space file (``space.yaml``) shared by the local Optuna search and Katib experiments.

Format (every key is optional except ``params``)::

    objective: accuracy        # validation metric to optimise: accuracy | f1_macro | loss
    retention: false           # true: also maximise forgetting retention (multi-objective, Pareto front)
    fixed:                     # train options every trial uses (TrainConfig field names)
      strategy: full
      max_length: 64
      eval_steps: 10           # evaluations are what the pruner sees: several per trial
    params:                    # searched train options
      learning_rate: {low: 1.0e-5, high: 2.0e-4, log: true}
      llrd: {low: 0.6, high: 1.0}
      epochs: {low: 1, high: 3, step: 1}
      l2sp: {choices: [0.0, 0.01, 0.1]}

A parameter is a range (``low``/``high``, optional ``log`` or ``step``) or a list of ``choices``. Its type
(int or float) comes from the TrainConfig field, or ``type: int|float`` when given. Every name must be a
TrainConfig option; values are checked by building a TrainConfig at both ends of every range, so a bad
range fails before any trial runs. Errors are one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transferkit.errors import ConfigError
from transferkit.train import TrainConfig

OBJECTIVES = ("accuracy", "f1_macro", "loss")
# Options a search must not set: the data, model and output paths belong to the tune command.
RESERVED = ("data_dir", "model", "out_dir", "checkpoint_dir", "resume", "keep_checkpoints", "metric")
_TOP_KEYS = ("objective", "retention", "fixed", "params")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One searched option.

    Attributes:
        name: TrainConfig field name.
        kind: ``int``, ``float`` or ``categorical``.
        low: Lower bound (ranges).
        high: Upper bound (ranges).
        log: Sample on a log scale.
        step: Grid step (ranges), or None.
        choices: The values of a categorical parameter.

    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def bounds(self) -> list[Any]:
        """The values checked against TrainConfig: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    """A parsed ``space.yaml``.

    Attributes:
        params: Searched options, in file order.
        fixed: Options every trial uses.
        objective: Validation metric optimised (``accuracy``, ``f1_macro`` or ``loss``).
        retention: Whether forgetting retention is a second objective.
        source: The file it came from (for messages).

    """

    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    objective: str = "accuracy"
    retention: bool = False
    source: str = "space.yaml"

    @property
    def directions(self) -> list[str]:
        """Optuna study directions: the metric's, then ``maximize`` for retention when searched."""
        first = "minimize" if self.objective == "loss" else "maximize"
        return [first, "maximize"] if self.retention else [first]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Fixed options plus one value per searched parameter."""
        return {**self.fixed, **{p.name: p.suggest(trial) for p in self.params}}

    def defaults(self) -> dict[str, Any]:
        """The untuned configuration: fixed options only (the rest from the model's catalog entry)."""
        return dict(self.fixed)


def _field_kinds() -> dict[str, str]:
    """TrainConfig option name -> ``int``, ``float``, ``bool``, ``str`` or ``path`` (from the annotations)."""
    hints = typing.get_type_hints(TrainConfig)
    kinds: dict[str, str] = {}
    for f in dataclasses.fields(TrainConfig):
        if not f.init:
            continue
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        real = [a for a in args if a is not type(None)]
        kinds[f.name] = {bool: "bool", int: "int", float: "float", Path: "path"}.get(real[0], "str")
    return kinds


def _number(where: str, value: Any) -> float:
    # PyYAML reads `1e-5` (no dot) as a string: accept any text float() understands.
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _parse_param(where: str, name: str, spec: Any, kinds: dict[str, str]) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with low/high or choices, got {spec!r}")
    unknown = sorted(set(spec) - set(_PARAM_KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; expected one of {', '.join(_PARAM_KEYS)}")
    if "choices" in spec:
        extra = sorted(set(spec) & {"low", "high", "log", "step"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not allowed beside choices")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        if any(isinstance(c, dict | list) for c in choices):
            raise ConfigError(f"{where}.choices: expected plain values (numbers, text, booleans)")
        return Param(name, "categorical", choices=tuple(choices))
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}.{key}: required for a range (or give choices)")
    kind = spec.get("type", kinds[name])
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}.type: {name} is a {kind} option; give choices, or type int|float")
    low, high = _number(f"{where}.low", spec["low"]), _number(f"{where}.high", spec["high"])
    if low >= high:
        raise ConfigError(f"{where}.high: must be greater than low ({low:g}), got {high:g}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log range needs low > 0, got {low:g}")
    step = _number(f"{where}.step", spec["step"]) if spec.get("step") is not None else None
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}.step: expected a positive step on a linear range, got {spec['step']!r}")
    if kind == "int":
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and value != int(value):
                raise ConfigError(f"{where}.{key}: {name} is an integer option, got {value:g}")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    return Param(name, kind, low=low, high=high, log=log, step=step)


def parse_space(payload: Any, source: str = "space.yaml") -> SearchSpace:
    """Validate a loaded ``space.yaml`` document.

    Raises:
        ConfigError: One line naming ``source`` and the key at fault.

    """
    if not isinstance(payload, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'params' key, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key; expected one of {', '.join(_TOP_KEYS)}")
    objective = payload.get("objective", "accuracy")
    if objective not in OBJECTIVES:
        raise ConfigError(f"{source}: objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
    retention = payload.get("retention", False)
    if not isinstance(retention, bool):
        raise ConfigError(f"{source}: retention: expected true or false, got {retention!r}")
    kinds = _field_kinds()
    sections: dict[str, dict[str, Any]] = {}
    for section in ("fixed", "params"):
        value = payload.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {section}: expected a mapping of train options, got {value!r}")
        for name in value:
            where = f"{source}: {section}.{name}"
            if name in RESERVED:
                raise ConfigError(f"{where}: set by the tune command, not the search space")
            if name not in kinds:
                raise ConfigError(f"{where}: not a train option (see `transferkit train --help`)")
        sections[section] = value
    if not sections["params"]:
        raise ConfigError(f"{source}: params: at least one searched option is required")
    both = sorted(set(sections["fixed"]) & set(sections["params"]))
    if both:
        raise ConfigError(f"{source}: params.{both[0]}: also in fixed; an option is either fixed or searched")
    params = tuple(_parse_param(f"{source}: params.{name}", name, spec, kinds)
                   for name, spec in sections["params"].items())
    space = SearchSpace(params=params, fixed=dict(sections["fixed"]), objective=objective, retention=retention,
                        source=source)
    _check_against_train_config(space)
    return space


def _check_against_train_config(space: SearchSpace) -> None:
    """Build a TrainConfig from the fixed options and each range end / choice; name the key that fails."""
    placeholders = {"data_dir": Path("data"), "model": "model", "out_dir": Path("out"),
                    "strategy": space.fixed.get("strategy", "full")}
    try:
        TrainConfig(**{**placeholders, **space.fixed})
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{space.source}: fixed: {exc}") from None
    for param in space.params:
        for value in param.bounds():
            try:
                TrainConfig(**{**placeholders, **space.fixed, param.name: value})
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{space.source}: params.{param.name}: {value!r} is not valid ({exc})") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a ``space.yaml`` file.

    Raises:
        ConfigError: Missing or unreadable file, YAML syntax error, or an invalid key (named).

    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the search space ({exc.strerror or exc})") from None
    try:
        payload = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return parse_space(payload, source=str(path))
