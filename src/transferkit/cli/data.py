"""`transferkit data prepare` (being implemented)."""

from __future__ import annotations

import typer

from transferkit.cli._common import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.command("prepare")
def prepare() -> None:
    """Prepare a dataset (not implemented yet)."""
    not_implemented("data prepare", 2)
