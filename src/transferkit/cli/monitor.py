"""`transferkit monitor`: drift monitoring of served traffic (service, baseline, late labels, replay)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer

from transferkit.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True, help="Drift monitoring of served traffic against the export's baseline.")


def _post(url: str, payload: Any, timeout: float = 30.0) -> dict[str, Any]:
    """POST JSON to the monitor; its 400 answers come back as MonitorError."""
    from transferkit.errors import MonitorError, ServerUnavailableError

    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise MonitorError(f"{url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerUnavailableError(f"{url}: monitor not reachable ({getattr(exc, 'reason', exc)})") from None


@app.command("serve")
@handle_errors
def serve(
    baseline: Path = typer.Option(..., "--baseline", "-b", help="Export directory (with monitor_baseline/) or "
                                  "a baseline folder."),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
    port: int = typer.Option(8008, help="HTTP port (records, feedback, /metrics, reports)."),
    window_size: int = typer.Option(200, help="Sampled records per window."),
    alpha: float = typer.Option(0.05, help="False-alarm rate per window (Bonferroni over the window's tests)."),
    permutations: int = typer.Option(500, help="Permutations of the MMD embedding test."),
    report_dir: Path = typer.Option(Path("monitor-reports"), help="Where window-<n>.html/.json are written."),
    model_name: str = typer.Option("model", "--model", help="Model name on the metrics."),
    event_sample_rate: float = typer.Option(1.0, help="Fraction of KServe payload-logger requests monitored "
                                            "(POST /v1/events; needs --baseline to be the export directory)."),
) -> None:
    """Run the monitor service until interrupted."""
    from transferkit.errors import ConfigError
    from transferkit.monitor import DriftConfig, load_baseline
    from transferkit.monitor.baseline import ServedGraph
    from transferkit.monitor.events import EventIngester
    from transferkit.monitor.service import MonitorServer
    from transferkit.monitor.state import Monitor

    if not 0.0 < event_sample_rate <= 1.0:
        raise ConfigError(f"event_sample_rate: expected a fraction in (0, 1], got {event_sample_rate}")
    config = DriftConfig(window_size=window_size, alpha=alpha, permutations=permutations)
    reference = load_baseline(baseline)
    monitor = Monitor(reference, config, report_dir, model_name)
    # KServe's logged payloads hold no embedding: the served graph of the export computes it (export dirs only).
    graph = ServedGraph(baseline) if (baseline / "io_spec.json").is_file() else None
    server = MonitorServer(monitor, host, port, events=EventIngester(monitor, graph, event_sample_rate))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            console.print(f"Monitor ready on {server.url} (baseline {len(reference.predictions)} rows, "
                          f"window {window_size}); metrics {server.url}/metrics, reports in {report_dir}")
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("baseline")
@handle_errors
def baseline(
    export_dir: Path = typer.Option(..., "--export", "-e", help="Export directory (io_spec.json)."),
    data_dir: Path = typer.Option(..., "--data", "-d", help="Prepared dataset directory."),
    split: str = typer.Option("validation", help="Split the baseline is drawn from."),
    size: int = typer.Option(500, help="Rows in the baseline sample."),
    seed: int = typer.Option(0, help="Sample seed."),
) -> None:
    """(Re)compute the monitoring baseline of an export (the export step writes it too)."""
    from transferkit.errors import ConfigError
    from transferkit.monitor import write_baseline

    if size < 10:
        raise ConfigError(f"size: expected an integer >= 10, got {size}")
    out = write_baseline(export_dir, data_dir, split=split, size=size, seed=seed)
    console.print(f"Baseline written to {out}")


@app.command("feedback")
@handle_errors
def feedback(
    labels_file: Path = typer.Argument(..., help="CSV (request_id,label) or JSON Lines with true labels."),
    monitor_url: str = typer.Option("http://127.0.0.1:8008", help="Monitor base URL."),
) -> None:
    """Send late labels; the monitor joins them to sampled predictions (live accuracy per window)."""
    from transferkit.monitor.records import read_feedback

    pairs = read_feedback(labels_file)
    result = _post(f"{monitor_url.rstrip('/')}/v1/feedback",
                   {"labels": [{"request_id": r, "label": lab} for r, lab in pairs]})
    console.print(f"{result['matched']} labels matched sampled predictions, {result['unknown']} unknown ids")


@app.command("replay")
@handle_errors
def replay(
    corpus: str = typer.Option(..., help="movie, tweets, amazon or nyt (VADER archive)."),
    rows: int = typer.Option(400, help="Rows to send."),
    seed: int = typer.Option(0, help="Row sample seed."),
    triton_url: str = typer.Option("", help="Send the rows to this Triton (HTTP) as inference requests; the "
                                   "server samples them to its monitor."),
    model: str = typer.Option("", help="Triton model name (with --triton-url)."),
    export_dir: Path = typer.Option(None, "--export", help="Without Triton: run the export's served graph here "
                                    "and post every row to the monitor."),
    monitor_url: str = typer.Option("http://127.0.0.1:8008", help="Monitor base URL (without Triton)."),
    labels_out: Path = typer.Option(None, help="Write request_id,label of the sent rows (for `feedback`)."),
) -> None:
    """Replay labelled text traffic (in-distribution or shifted) through Triton or straight to the monitor."""
    import csv

    import numpy as np

    from transferkit.errors import ConfigError
    from transferkit.monitor.replay import replay_triton, vader_corpus

    texts, labels = vader_corpus(corpus)
    chosen = np.random.default_rng(seed).choice(len(texts), min(rows, len(texts)), replace=False)
    texts, labels = [texts[i] for i in chosen], [labels[i] for i in chosen]
    ids = [f"{corpus}-{seed}-{i}" for i in range(len(texts))]
    if triton_url:
        if not model:
            raise ConfigError("model: required with --triton-url")
        replay_triton(triton_url, model, texts, ids)
    elif export_dir is not None:
        from transferkit.monitor.baseline import ServedGraph
        from transferkit.monitor.replay import records_from_outputs

        graph = ServedGraph(export_dir)
        records = records_from_outputs(graph.run(texts), graph.inputs.features, f"{corpus}-{seed}")
        for start in range(0, len(records), 100):
            _post(f"{monitor_url.rstrip('/')}/v1/records", {"records": records[start : start + 100]})
    else:
        raise ConfigError("triton_url: give --triton-url (and --model) or --export")
    if labels_out is not None:
        with labels_out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "label"])
            writer.writerows(zip(ids, labels, strict=True))
    console.print(f"Replayed {len(texts)} {corpus} rows")
