"""`transferkit registry`: the versions registered in the Kubeflow Model Registry by `deploy`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True)

URL = typer.Option(..., "--registry-url", envvar="TRANSFERKIT_REGISTRY_URL",
                   help="Kubeflow Model Registry http(s)://host:port.")
TOKEN_ENV = typer.Option("TRANSFERKIT_REGISTRY_TOKEN", "--registry-token-env", help="Env var with the token.")
TOKEN_FILE = typer.Option(None, "--registry-token-file", help="Mounted Secret file with the token.")


def _registry(url: str, token_env: str, token_file: Path | None):  # type: ignore[no-untyped-def]
    from transferkit.serve.registry import ModelRegistry, RegistryConfig

    return ModelRegistry(RegistryConfig(url=url, token_env=token_env or None,
                                        token_file=str(token_file) if token_file else None))


@app.command("list")
@handle_errors
def list_models(registry_url: str = URL, registry_token_env: str = TOKEN_ENV, registry_token_file: Path = TOKEN_FILE,
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered models and their versions (state, transferkit status)."""
    models = _registry(registry_url, registry_token_env, registry_token_file).list_models()
    if as_json:
        typer.echo(json.dumps(models, indent=2))
        return
    from rich.table import Table

    table = Table("model", "version", "state", "status", "variant", "primary metric")
    for model in models:
        for version in model["versions"]:
            meta = version["metadata"]
            metric = meta.get("primary_metric_value")
            table.add_row(model["name"], version["version"], str(version["state"]), str(version["status"] or "-"),
                          str(meta.get("variant", "-")),
                          f"{meta.get('primary_metric')} {metric:.4f}" if isinstance(metric, float) else "-")
    console.print(table)


@app.command("show")
@handle_errors
def show(name: str = typer.Argument(..., help="Registered model (the deployed name)."),
         version: str = typer.Argument(None, help="Version (default: the newest)."),
         registry_url: str = URL, registry_token_env: str = TOKEN_ENV, registry_token_file: Path = TOKEN_FILE) -> None:
    """One version: artifact URI, format, state and lineage metadata (JSON)."""
    record = _registry(registry_url, registry_token_env, registry_token_file).show(name, version)
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


@app.command("mark")
@handle_errors
def mark(name: str = typer.Argument(..., help="Registered model (the deployed name)."),
         version: str = typer.Argument(..., help="Version to mark."),
         status: str = typer.Option("rolled_back", "--status", help="transferkit.status to set (e.g. rolled_back)."),
         reason: str = typer.Option(..., "--reason", help="Why (kept in the version's metadata)."),
         archive: bool = typer.Option(True, "--archive/--no-archive", help="Also set the version ARCHIVED."),
         registry_url: str = URL, registry_token_env: str = TOKEN_ENV, registry_token_file: Path = TOKEN_FILE) -> None:
    """Mark a version by hand, e.g. after rolling a GitOps deployment back with a Git revert."""
    from transferkit.errors import ConfigError

    if not status.strip() or not reason.strip():
        raise ConfigError("status and reason: must not be empty")
    record = _registry(registry_url, registry_token_env, registry_token_file).mark(name, version, status, reason,
                                                                                  archive=archive)
    typer.echo(json.dumps(record, indent=2, sort_keys=True))
