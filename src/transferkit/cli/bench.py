"""`transferkit bench serve`: bounded load generator for a Triton endpoint (HTTP and gRPC)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True)


def _ints(text: str) -> tuple[int, ...]:
    from transferkit.errors import ConfigError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"concurrency: expected comma-separated integers, got {text!r}") from exc


MAX_IMAGES = 256


def _load_images(path: Path) -> tuple[bytes, ...]:
    """Encoded images from a prepared image dataset (its test split) or a folder of image files (recursive).

    Raises:
        ConfigError: The path holds no images.
    """
    from transferkit.data.images import IMAGE_SUFFIXES
    from transferkit.data.prepared import load_prepared
    from transferkit.errors import ConfigError

    if (path / "schema.json").is_file():
        images = load_prepared(path).images("test")[:MAX_IMAGES]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        images = [p.read_bytes() for p in files[:MAX_IMAGES]]
    else:
        raise ConfigError(f"--images {path}: not a directory (expected a prepared image dataset or image files)")
    if not images:
        raise ConfigError(f"--images {path}: no images found (PNG, JPEG, BMP, GIF or WebP files, or a prepared "
                          "image dataset with a test split)")
    return tuple(images)


@app.command("serve")
@handle_errors
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Model to call (text ensemble: BYTES input 'text')."),
    images: Path = typer.Option(None, help="Image models: a prepared image dataset (test split) or a folder of "
                                           "image files to send instead of sentences."),
    http_url: str = typer.Option("http://127.0.0.1:8000", help="Triton HTTP endpoint."),
    grpc_url: str = typer.Option("127.0.0.1:8001", help="Triton gRPC endpoint (host:port)."),
    metrics_url: str = typer.Option("http://127.0.0.1:8002/metrics", help="Prometheus metrics ('' to skip)."),
    protocol: str = typer.Option("http,grpc", help="Protocols to sweep."),
    concurrency: str = typer.Option("1,4,16", help="Concurrency levels."),
    requests: int = typer.Option(200, help="Requests per level (bounded)."),
    duration: float = typer.Option(30.0, help="Seconds per level at most (bounded)."),
    batch_model: str = typer.Option("", help="Model whose server-side batch size is reported "
                                    "(default: MODEL_onnx behind an ensemble, else MODEL)."),
    allow_remote: bool = typer.Option(False, help="Allow non-loopback targets."),
    output: Path = typer.Option(None, help="Write the JSON result here."),
    max_tokens: int = typer.Option(32, help="Generative (decoupled) models: max_tokens of every streamed request."),
) -> None:
    """Sweep concurrency over HTTP/gRPC: req/s, p50/p95/p99, errors, server-side batch size.

    Hand-written because perf_analyzer is not available here; it stops after the request count or the
    time limit per level and only targets loopback unless --allow-remote is given.
    """
    from transferkit.serve.genload import is_generative_model
    from transferkit.serve.loadgen import LoadConfig, run_load

    if is_generative_model(http_url, model):
        _serve_generative(model, http_url, _ints(concurrency), requests, max_tokens, allow_remote, output)
        return
    config = LoadConfig(http_url=http_url, grpc_url=grpc_url, metrics_url=metrics_url or None, model=model,
                        batch_model=batch_model or None,
                        protocols=tuple(p.strip() for p in protocol.split(",") if p.strip()),
                        concurrency=_ints(concurrency), requests=requests, duration_s=duration,
                        allow_remote=allow_remote, images=_load_images(images) if images else None)
    result = run_load(config)
    console.print(f"{'protocol':<8} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
                  f"{'errors':>6} {'batch':>6}")
    for lv in result.levels:
        batch = f"{lv.server_avg_batch_size:.2f}" if lv.server_avg_batch_size is not None else "-"
        console.print(f"{lv.protocol:<8} {lv.concurrency:>4} {lv.throughput_rps:>8.1f} {lv.p50_ms:>8.1f} "
                      f"{lv.p95_ms:>8.1f} {lv.p99_ms:>8.1f} {lv.errors:>6} {batch:>6}")
    payload = json.dumps(result.to_dict(), sort_keys=True)
    if output:
        from transferkit.io import write_text_atomic

        write_text_atomic(output, payload + "\n")
    console.print(payload, markup=False)
    if result.total_errors:
        raise typer.Exit(1)


def _serve_generative(model: str, http_url: str, levels: tuple[int, ...], requests: int, max_tokens: int,
                      allow_remote: bool, output: Path | None) -> None:
    """Streaming load on a decoupled generative model: TTFT, inter-token latency, output tokens/s, failures."""
    from transferkit.errors import ConfigError
    from transferkit.serve.genload import run_generative_load
    from transferkit.serve.loadgen import _host_of, _is_loopback

    if not allow_remote and not _is_loopback(_host_of(http_url)):
        raise ConfigError(f"http_url: {http_url} is not loopback; pass --allow-remote to load a remote server")
    result = run_generative_load(http_url, model, concurrency=levels, requests=requests, max_tokens=max_tokens)
    console.print(f"{'conc':>4} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} "
                  f"{'failed':>6}")
    for lv in result.levels:
        console.print(f"{lv.concurrency:>4} {lv.output_tokens_per_s:>9.1f} {lv.ttft_ms['p50']:>9.1f} "
                      f"{lv.ttft_ms['p95']:>9.1f} {lv.itl_ms['p50']:>8.2f} {lv.itl_ms['p95']:>8.2f} {lv.failed:>6}")
    payload = json.dumps(result.to_dict(), sort_keys=True)
    if output:
        from transferkit.io import write_text_atomic

        write_text_atomic(output, payload + "\n")
    console.print(payload, markup=False)
    if result.failed_requests:
        raise typer.Exit(1)
