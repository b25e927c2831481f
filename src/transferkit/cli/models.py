"""`transferkit models list|show`: the model catalog."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from transferkit.cli._common import console, handle_errors
from transferkit.models.catalog import CATALOG, get_entry, resolve_model

app = typer.Typer(no_args_is_help=True)


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


@app.command("list")
@handle_errors
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the catalog of known base models."""
    if as_json:
        console.print_json(json.dumps([e.to_dict() for e in CATALOG.values()]))
        return
    table = Table(title="transferkit model catalog")
    for column in ("name", "task", "kind", "params", "preprocessing", "defaults", "forgetting source", "source"):
        table.add_column(column)
    for entry in CATALOG.values():
        pre = entry.preprocessing
        if pre.kind == "tokenizer":
            prep = f"{pre.tokenizer}, max_length {pre.max_length}"
        else:
            prep = f"image {pre.image_size}px, mean {pre.mean}, std {pre.std}"
        hp = entry.hyperparameters
        defaults = f"lr {hp.get('learning_rate')}, bs {hp.get('batch_size')}, epochs {hp.get('epochs')}"
        forgetting = f"{entry.forgetting_source} ({entry.forgetting_mode})"
        table.add_row(entry.name, entry.task, entry.kind, _millions(entry.parameters), prep, defaults,
                      forgetting, entry.source)
    console.print(table)
    console.print("Any local model directory or Hugging Face id (org/name, where the hub is reachable) also works.")


@app.command("show")
@handle_errors
def show(
    name: str = typer.Argument(..., help="Catalog name, local model directory or hub id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one model: catalog details, resolved path and config."""
    if name in CATALOG:
        entry = get_entry(name)
        info = entry.to_dict()
        if entry.locate is not None:
            info["path"] = str(resolve_model(name).path)
    else:
        resolved = resolve_model(name)
        info = {
            "name": name, "path": str(resolved.path), "model_type": resolved.model_type,
            "architectures": resolved.config.get("architectures"), "head_labels": resolved.head_labels,
            "embedding_model": resolved.is_embedding_model,
        }
    if as_json:
        console.print_json(json.dumps(info, default=str))
        return
    table = Table(title=name, show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, dict | list) else str(value))
    console.print(table)
