"""`transferkit serve`: run the real local Triton over a model repository until Ctrl-C/SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


def _entry_models(repository: Path) -> list[str]:
    """Deployments recorded in the repository (ensembles), else every folder with a config."""
    entries = []
    for record in sorted(repository.glob("*/DEPLOYMENT.json")):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("serving_version") and (repository / record.parent.name / "config.pbtxt").is_file():
            entries.append(record.parent.name)
    if entries:
        return entries
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


def _example_request(repository: Path, model: str, http_url: str) -> str:
    """A curl command that calls ``model``: a sentence for text deployments, a base64 PNG for image ones."""
    from transferkit.serve.repository import model_names

    url = f"{http_url}/v2/models/{model}/infer"
    if (repository / model_names(model, kind="image")[0]).is_dir():
        body = ('{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":["\'$(base64 -w0 IMAGE.png)\'"]}]}')
        return f"curl -s -X POST {url} -H 'Content-Type: application/json' -d '{body}'"
    body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES",
                                   "data": ["A wonderful, moving film."]}]})
    return f"curl -s -X POST {url} -H 'Content-Type: application/json' -d '{body}'"


@handle_errors
def serve(
    repository: Path = typer.Option(..., "--repository", "-r", help="Model repository folder."),
    model: list[str] = typer.Option(None, "--model", "-m", help="Model(s) to load (default: deployed ones)."),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
    http_port: int = typer.Option(8000, "--http-port", "--port", help="HTTP port (0 = any free port)."),
    grpc_port: int = typer.Option(8001, help="gRPC port (0 = any free port)."),
    metrics_port: int = typer.Option(8002, help="Prometheus metrics port (0 = any free port)."),
    config_name: str = typer.Option(
        "local", help="Config variant: 'local' reads configs/local.pbtxt; '' = config.pbtxt."),
    api_key_env: str = typer.Option(
        "", help="Env var holding a key that protects the model-control API (never pass the key itself)."),
    api_key_file: Path = typer.Option(None, help="Secret file holding the model-control key."),
    log_file: Path = typer.Option(None, help="Server log file (default: temporary)."),
) -> None:
    """Run a local Triton server (real tritonserver, explicit model control) until interrupted."""
    from transferkit.errors import ServingError
    from transferkit.serve.control import read_api_key
    from transferkit.serve.install import install_triton
    from transferkit.serve.local import LocalTriton, check_ports, check_ports_free

    check_ports(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    if not repository.is_dir():
        raise ServingError(f"{repository}: model repository folder does not exist")
    models = list(model or []) or _entry_models(repository)
    if api_key_env and not api_key_file and not os.environ.get(api_key_env, "").strip():
        from transferkit.errors import AuthError

        raise AuthError(f"--api-key-env {api_key_env}: the variable is unset or empty; expected it to hold the "
                        "model-control key (the control API would be left unprotected)")
    key = read_api_key(api_key_env or None, api_key_file)
    check_ports_free(host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    install = install_triton()  # idempotent: a no-op after `make setup`
    server = LocalTriton(repository, models=models, host=host, http_port=http_port, grpc_port=grpc_port,
                         metrics_port=metrics_port, model_config_name=config_name or None, restricted_api_key=key,
                         log_path=log_file, install=install)
    try:
        server.start()
        console.print(f"Triton ready (pid {server.pid}); models: {', '.join(models) or 'none'}")
        console.print(f"  HTTP     {server.http_url}")
        console.print(f"  gRPC     {server.grpc_url}")
        console.print(f"  metrics  {server.metrics_url}")
        if models:
            console.print(f"  try:     {_example_request(repository, models[0], server.http_url)}", markup=False)
        console.print("Press Ctrl-C to stop.")
        while not stop.wait(0.5):
            if not server.running():
                raise ServingError(f"tritonserver exited unexpectedly: {server.log_tail()}")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("Triton stopped.")
