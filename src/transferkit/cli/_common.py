"""Helpers shared by CLI commands: one-line errors and non-zero exits."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from transferkit.errors import TransferkitError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False, soft_wrap=True)
logger = logging.getLogger("transferkit.cli")


def handle_errors(func: F) -> F:
    """Turn :class:`TransferkitError` into a one-line ``error: ...`` on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TransferkitError as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("error: interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def not_implemented(command: str, issue: int) -> None:
    """Refuse a command whose implementation has not landed yet (never pretend to work)."""
    err_console.print(f"error: `transferkit {command}` is not implemented yet (tracked in issue {issue})")
    raise typer.Exit(1)
