"""`transferkit bench` (implemented by issue 6)."""

from __future__ import annotations

import typer

from transferkit.cli._common import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.command("serve")
def serve() -> None:
    """Load-test a Triton endpoint (not implemented yet)."""
    not_implemented("bench serve", 6)
