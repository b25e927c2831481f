"""Step options declared once: a config dataclass field carries its CLI flag, help text and KFP "unset" value.

A step's config dataclass (``TrainConfig``, ``ExportConfig``) is the single declaration of its options. Each
user-facing field gets ``metadata=option(...)``; from that:

- the typer command's parameters are derived (:func:`cli_parameters`), so a new option needs no CLI code;
- a config is turned back into the command line that reproduces it (:func:`to_cli_args`), for torchrun and
  Kubeflow TrainJob launches;
- KFP component parameters, which cannot be None, are mapped to config values (:func:`from_kfp_parameters`):
  a field's ``kfp_unset`` value (``0``, ``-1.0``, ``""``) stands for "not given" (the config's default).

The component keeps its typed signature (KFP reads it); its body passes the parameters to the library.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

_FLAGS = "transferkit_flags"
_HELP = "transferkit_help"
_UNSET = "transferkit_kfp_unset"
_NO_UNSET = object()


def option(*flags: str, help: str, kfp_unset: Any = _NO_UNSET) -> dict[str, Any]:
    """Field metadata declaring a user-facing option.

    Args:
        *flags: CLI flags, the canonical one first (``"--learning-rate", "--lr"``). Booleans get a
            ``--x/--no-x`` pair from the first flag.
        help: The option's help text (CLI ``--help`` and the config's documentation).
        kfp_unset: The KFP component value meaning "not given": the field keeps its default. A negative
            ``kfp_unset`` stands for every negative value.

    """
    if not flags or not all(flag.startswith("--") for flag in flags):
        raise ValueError(f"option flags must start with '--', got {flags!r}")
    metadata: dict[str, Any] = {_FLAGS: flags, _HELP: help}
    if kfp_unset is not _NO_UNSET:
        metadata[_UNSET] = kfp_unset
    return metadata


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass declared with :func:`option`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.init and _FLAGS in f.metadata]


def help_text(cls: type, name: str) -> str:
    """The declared help text of option ``name`` of ``cls``."""
    return next(f.metadata[_HELP] for f in option_fields(cls) if f.name == name)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (typing.get_origin(annotation) is not None and bool in typing.get_args(annotation)
                                  and all(a in (bool, type(None)) for a in typing.get_args(annotation)))


def cli_parameters(cls: type) -> list[inspect.Parameter]:
    """Keyword-only typer parameters for every option of ``cls`` (required fields become required options)."""
    import typer

    hints = typing.get_type_hints(cls)
    parameters = []
    for f in option_fields(cls):
        flags = f.metadata[_FLAGS]
        annotation = hints[f.name]
        if _is_bool(annotation):
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        parameters.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
            default=typer.Option(default, *flags, help=f.metadata[_HELP]),
        ))
    return parameters


def with_config_options(cls: type, extra: list[inspect.Parameter]) -> Any:
    """Decorator: give a ``command(**options)`` function the typer signature of ``cls``'s options + ``extra``.

    The wrapped function receives every option as a keyword argument; :func:`split_options` separates the
    config's fields from the command's own.
    """

    def decorate(func: Any) -> Any:
        func.__signature__ = inspect.Signature([*cli_parameters(cls), *extra])
        func.__annotations__ = {}
        return func

    return decorate


def value_flags(cls: type) -> dict[str, str]:
    """``{field: canonical CLI flag}`` of the options of ``cls`` that take a value (booleans left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata[_FLAGS][0] for f in option_fields(cls) if not _is_bool(hints[f.name])}


def split_options(cls: type, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config fields, the rest)`` of a command's keyword arguments."""
    names = {f.name for f in option_fields(cls)}
    return ({k: v for k, v in values.items() if k in names}, {k: v for k, v in values.items() if k not in names})


def to_cli_args(config: Any) -> list[str]:
    """The command-line arguments that reproduce ``config`` (None and fields at their default are left out)."""
    hints = typing.get_type_hints(type(config))
    args: list[str] = []
    for f in option_fields(type(config)):
        value = getattr(config, f.name)
        if value is None or value == f.default:
            continue
        flag = f.metadata[_FLAGS][0]
        if _is_bool(hints[f.name]):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, str(value)]
    return args


def from_kfp_parameters(cls: type, parameters: dict[str, Any]) -> dict[str, Any]:
    """Map component parameter values to config values: a field's ``kfp_unset`` value is left out.

    A left-out field takes the config's default (None for the options resolved later from the catalog).

    Raises:
        KeyError: A parameter that is not an option of ``cls``.

    """
    fields = {f.name: f for f in option_fields(cls)}
    values: dict[str, Any] = {}
    for name, value in parameters.items():
        if name not in fields:
            raise KeyError(f"{name}: not an option of {cls.__name__}")
        unset = fields[name].metadata.get(_UNSET, _NO_UNSET)
        if unset is not _NO_UNSET:
            negative_sentinel = isinstance(unset, int | float) and not isinstance(unset, bool) and unset < 0
            if value == unset or (negative_sentinel and isinstance(value, int | float) and value < 0):
                continue
        values[name] = value
    return values
