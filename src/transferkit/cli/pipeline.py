"""`transferkit pipeline` (implemented by issue 7)."""

from __future__ import annotations

import typer

from transferkit.cli._common import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run() -> None:
    """Run the pipeline locally (not implemented yet)."""
    not_implemented("pipeline run", 7)


@app.command("compile")
def compile_() -> None:
    """Compile the pipeline (not implemented yet)."""
    not_implemented("pipeline compile", 7)
