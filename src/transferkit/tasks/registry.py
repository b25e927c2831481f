"""The task registry: task identity is read here and nowhere else.

:func:`get_task` answers "which task?" for a task name, a prepared dataset (its ``schema.json``), a prepared
dataset directory, or a model (catalog name or model directory); :func:`register_task` adds a task. The
built-in tasks are registered on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, PreparedDataError
from transferkit.tasks.base import Task

DEFAULT_TASK = "text-classification"
_BUILTIN_MODULES = ("transferkit.tasks.text_classification", "transferkit.tasks.image_classification",
                    "transferkit.tasks.generation")
_REGISTRY: dict[str, Task] = {}


def _ensure_builtins() -> None:
    if not _REGISTRY:
        import importlib

        for name in _BUILTIN_MODULES:
            module = importlib.import_module(name)
            # A module registers one TASK, or several related ones as TASKS.
            for task in getattr(module, "TASKS", None) or (module.TASK,):
                _REGISTRY.setdefault(task.name, task)


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` to the registry (under ``task.name``) and return it.

    Model directories are matched against tasks newest first, so a task registered later must claim only
    its own models in :meth:`~transferkit.tasks.base.Task.owns_model_config`.

    Raises:
        ConfigError: Another task already has that name (unless ``replace``).

    """
    _ensure_builtins()
    if task.name in _REGISTRY and not replace and _REGISTRY[task.name] is not task:
        raise ConfigError(f"task: {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task added with :func:`register_task` (tests)."""
    _REGISTRY.pop(name, None)


def task_names() -> tuple[str, ...]:
    """Names of the registered tasks, in registration order."""
    _ensure_builtins()
    return tuple(_REGISTRY)


def find_task(name: str) -> Task | None:
    """The task registered as ``name``, or None."""
    _ensure_builtins()
    return _REGISTRY.get(name)


def get_task(source: str | Path | Task | Any) -> Task:
    """The task of a name, a prepared dataset or its directory, or a model (catalog name or directory).

    Args:
        source: A task name (``text-classification``); a :class:`~transferkit.data.prepared.PreparedDataset`
            or a directory with ``schema.json`` (its ``task``, default ``text-classification``); a catalog
            model name or a model directory (see :func:`model_task`); or a :class:`Task`.

    Raises:
        ConfigError: An unknown task name, or a model or path that does not tell its task.
        PreparedDataError: A ``schema.json`` naming an unknown task, or one that does not parse.

    """
    if isinstance(source, Task):
        return source
    schema = getattr(source, "schema", None)
    if isinstance(schema, dict):
        return _task_of_schema(schema, Path(source.path) / "schema.json")
    text = str(source)
    task = find_task(text)
    if task is not None:
        return task
    path = Path(text).expanduser()
    if (path / "schema.json").is_file():
        try:
            schema = json.loads((path / "schema.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PreparedDataError(f"{path / 'schema.json'}: not valid JSON ({exc})") from exc
        return _task_of_schema(schema if isinstance(schema, dict) else {}, path / "schema.json")
    task = model_task(text)
    if task is None:
        raise ConfigError(f"task: {text!r} is neither a task ({', '.join(task_names())}), a prepared dataset nor "
                          "a model that tells its task")
    return task


def _task_of_schema(schema: dict[str, Any], where: Path) -> Task:
    name = str(schema.get("task", DEFAULT_TASK))
    task = find_task(name)
    if task is None:
        raise PreparedDataError(f"{where}: unknown task {name!r}; expected one of {', '.join(task_names())}")
    return task


def export_task(directory: str | Path) -> Task | None:
    """The task that serves an export directory itself (:meth:`Task.owns_export`); None: the shared path."""
    _ensure_builtins()
    path = Path(directory)
    for task in reversed(list(_REGISTRY.values())):
        if task.owns_export(path):
            return task
    return None


def model_task(reference: str | Path) -> Task | None:
    """The task of a catalog model or a model directory; None when nothing there tells.

    A catalog name (that is not also an existing path) has its entry's task. A directory with a ``config.json``
    belongs to the newest registered task that claims that config; text classification claims any.
    """
    from transferkit.models.catalog import CATALOG

    text = str(reference)
    path = Path(text).expanduser()
    if text in CATALOG and not path.exists():
        return find_task(CATALOG[text].task)
    config_path = path / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        config = {}
    _ensure_builtins()
    for task in reversed(list(_REGISTRY.values())):
        if task.owns_model_config(config):
            return task
    return None
