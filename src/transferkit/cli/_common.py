"""Helpers shared by CLI commands: one-line errors and non-zero exits."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from transferkit.errors import TransferkitError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False, soft_wrap=True)
logger = logging.getLogger("transferkit.cli")


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@")


def redact(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` URL in ``text`` (error lines are logged)."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` as one line on stderr, with URL passwords hidden."""
    err_console.print(f"error: {redact(' '.join(str(message).split()))}", markup=False)


class OneLineErrors(TyperGroup):
    """The root command group: usage errors (bad types, unknown options) as one ``error:`` line, not a panel."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command; in standalone mode turn click's usage errors into one line and an exit code."""
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            value = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print_error(f"{exc.format_message()}{hint}")
            sys.exit(exc.exit_code)
        except Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(value if isinstance(value, int) else 0)


def handle_errors(func: F) -> F:
    """Turn :class:`TransferkitError` into a one-line ``error: ...`` on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TransferkitError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print_error(interrupted_message(kwargs))
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def interrupted_message(options: dict[str, Any]) -> str:
    """What Ctrl-C kept and how to go on: outputs are replaced only on success; training resumes from checkpoints."""
    from pathlib import Path

    out = options.get("out_dir") or options.get("out") or options.get("work_dir")
    message = "interrupted"
    if out:
        message += f"; {out} was left as it was (an output is replaced only when its step completes)"
    checkpoints = options.get("checkpoint_dir") or (Path(f"{out}.checkpoints") if "resume" in options and out else None)
    if checkpoints and Path(checkpoints).is_dir():
        message += (f"; checkpoints kept in {checkpoints}: re-run the same command to resume from the last complete "
                    "one (--no-resume starts over)")
    else:
        message += "; re-run the same command to start again"
    return message


def not_implemented(command: str, issue: int) -> None:
    """Refuse a command whose implementation has not landed yet (never pretend to work)."""
    err_console.print(f"error: `transferkit {command}` is not implemented yet (tracked in issue {issue})")
    raise typer.Exit(1)
