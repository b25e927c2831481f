"""A small, bounded load generator for Triton (HTTP and gRPC).

This is the one piece written by hand: NVIDIA's ``perf_analyzer`` is not installable here (the
registry's ``perf-analyzer`` package is an empty placeholder). It sends raw sentences to a text model
or encoded images to an image model (or any BYTES input to any model) from ``concurrency`` closed-loop
workers, and stops by itself after a fixed request count or time, whichever
comes first. It only targets loopback addresses unless ``allow_remote`` is set. Server-side batching is
read from Triton's Prometheus metrics (``nv_inference_count`` / ``nv_inference_exec_count`` deltas of
the batched model).

HTTP workers are threads with one client each; gRPC workers are coroutines sharing one channel of
tritonclient's asyncio client, so that the figures are the server's: 16 synchronous gRPC clients in
threads measured ~30% below the server's capacity at concurrency 16 on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from transferkit.errors import ConfigError, ServerUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_TEXTS = (
    "A gripping, beautifully acted film.",
    "Dull and overlong.",
    "The plot makes no sense, but the soundtrack is wonderful and the cast clearly had fun with it.",
    "not my kind of movie",
    "An instant classic that I will happily watch again next week with the whole family.",
    "meh",
)
_METRIC_RE = re.compile(r'^(nv_inference_count|nv_inference_exec_count)\{([^}]*)\}\s+([0-9.eE+-]+)$')
_VERSION_RE = re.compile(r'version="([^"]*)"')


@dataclass
class LoadConfig:
    """One load-generation run.

    Attributes:
        http_url: ``http://host:port`` of Triton's HTTP endpoint.
        grpc_url: ``host:port`` of the gRPC endpoint (needed for protocol ``grpc``).
        metrics_url: Prometheus ``/metrics`` URL (optional: server-side batch sizes).
        model: Model to call (the entry model of a text or image deployment).
        batch_model: Model whose batching is reported (default: ``<model>_onnx`` when ``model`` is an
            ensemble, else ``model``).
        protocols: ``http`` and/or ``grpc``.
        concurrency: Closed-loop worker counts to sweep.
        requests: Requests per (protocol, concurrency) level.
        duration_s: Time limit per level.
        warmup: Requests sent before each level's clock starts.
        texts: Sentences cycled through.
        text_pairs: Second sentences for sentence-pair models (cycled alongside ``texts``).
        text_input: Input tensor name.
        text_pair_input: Second input's name (pair models).
        images: Encoded images (PNG, JPEG... bytes) cycled through instead of ``texts`` (image models).
        image_input: Input tensor name for ``images``.
        outputs: Output names requested.
        timeout_s: Per-request network timeout.
        allow_remote: Permit non-loopback targets.
    """

    http_url: str
    model: str
    grpc_url: str | None = None
    metrics_url: str | None = None
    batch_model: str | None = None
    protocols: tuple[str, ...] = ("http",)
    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 200
    duration_s: float = 30.0
    warmup: int = 4
    texts: tuple[str, ...] = DEFAULT_TEXTS
    text_pairs: tuple[str, ...] | None = None
    text_input: str = "text"
    text_pair_input: str = "text_pair"
    images: tuple[bytes, ...] | None = None
    image_input: str = "image"
    outputs: tuple[str, ...] = ("label",)
    timeout_s: float = 30.0
    allow_remote: bool = False

    def __post_init__(self) -> None:
        self.protocols = tuple(self.protocols)
        self.concurrency = tuple(int(c) for c in self.concurrency)
        bad = [p for p in self.protocols if p not in ("http", "grpc")]
        if bad or not self.protocols:
            raise ConfigError(f"protocols: expected http and/or grpc, got {list(self.protocols)}")
        if "grpc" in self.protocols and not self.grpc_url:
            raise ConfigError("grpc_url: required when protocols include grpc")
        if not self.concurrency or min(self.concurrency) < 1 or max(self.concurrency) > 256:
            raise ConfigError(f"concurrency: values must be in 1..256, got {list(self.concurrency)}")
        if self.requests < 1 or self.duration_s <= 0:
            raise ConfigError("requests/duration_s: a run needs requests >= 1 and duration_s > 0 (it is bounded)")
        if self.images is not None:
            self.images = tuple(self.images)
            if not self.images or not all(isinstance(i, bytes) and i for i in self.images):
                raise ConfigError("images: expected at least one non-empty encoded image (bytes)")
        elif not self.texts:
            raise ConfigError("texts: at least one sentence is required")
        urls = [self.http_url, self.grpc_url, self.metrics_url]
        for url in filter(None, urls):
            host = _host_of(url)
            if not self.allow_remote and not _is_loopback(host):
                raise ConfigError(f"{url}: {host} is not a loopback address (set allow_remote to target it)")


def _host_of(url: str) -> str:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    return parsed.hostname or ""


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@dataclass
class LevelResult:
    """Measurements of one (protocol, concurrency) level.

    Latencies are the client's; ``server_avg_batch_size`` comes from the Prometheus counters of the batched
    model and ``server_ms`` from Triton's statistics (per model, see :func:`stats_breakdown`).
    """

    protocol: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    server_avg_batch_size: float | None = None
    server_executions: int | None = None
    server_ms: dict[str, dict[str, float]] | None = None
    versions_seen: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return asdict(self)


@dataclass
class LoadResult:
    """A whole sweep."""

    model: str
    levels: list[LevelResult]

    @property
    def total_errors(self) -> int:
        """Failed requests over all levels."""
        return sum(level.errors for level in self.levels)

    def level(self, protocol: str, concurrency: int) -> LevelResult:
        """Find one level."""
        return next(lv for lv in self.levels if lv.protocol == protocol and lv.concurrency == concurrency)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {"model": self.model, "total_errors": self.total_errors, "levels": [lv.to_dict() for lv in self.levels]}


BatchCounters = dict[str, tuple[float, float]]


def read_batch_counters(metrics_url: str, model: str) -> BatchCounters | None:
    """Per-version (inference count, execution count) of ``model``, from Prometheus text.

    Kept per version because a version unloaded between two reads (a hot swap) takes its counters with it;
    deltas must only compare versions present in both reads. Parsed by hand: two counters do not justify a
    Prometheus client dependency.
    """
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    counters: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = _METRIC_RE.match(line.strip())
        if match and f'model="{model}"' in match.group(2):
            version = _VERSION_RE.search(match.group(2))
            slot = counters.setdefault(version.group(1) if version else "", [0.0, 0.0])
            slot[0 if match.group(1) == "nv_inference_count" else 1] += float(match.group(3))
    return {version: (values[0], values[1]) for version, values in counters.items()} or None


def counter_delta(before: BatchCounters, after: BatchCounters) -> tuple[float, float]:
    """(inferences, executions) booked between two reads, over the versions still loaded at the second."""
    inferences = sum(values[0] - before.get(version, (0.0, 0.0))[0] for version, values in after.items())
    executions = sum(values[1] - before.get(version, (0.0, 0.0))[1] for version, values in after.items())
    return inferences, executions


_STAT_PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")
StatsSnapshot = dict[tuple[str, str], dict[str, tuple[int, int]]]


def read_inference_stats(http_url: str) -> StatsSnapshot | None:
    """Cumulative ``(count, ns)`` of each phase per ``(model, version)``, from Triton's statistics extension.

    Returns None when the server cannot be asked.
    """
    import tritonclient.http as http

    netloc = urlparse(http_url if "://" in http_url else f"http://{http_url}").netloc
    try:
        client = http.InferenceServerClient(netloc, connection_timeout=5, network_timeout=5)
        try:
            data = client.get_inference_statistics()
        finally:
            client.close()
    except Exception as exc:  # tritonclient raises its own and socket errors
        logger.debug("statistics unavailable: %s", exc)
        return None
    snapshot: StatsSnapshot = {}
    for entry in data.get("model_stats", []):
        stats = entry.get("inference_stats", {})
        snapshot[(entry["name"], str(entry.get("version", "")))] = {
            phase: (int(stats.get(phase, {}).get("count", 0)), int(stats.get(phase, {}).get("ns", 0)))
            for phase in _STAT_PHASES}
    return snapshot


def stats_breakdown(before: StatsSnapshot, after: StatsSnapshot) -> dict[str, dict[str, float]]:
    """Per model with traffic between two reads: requests and mean milliseconds per request of each phase.

    ``success_ms`` is a request's whole time in the model; ``queue_ms`` its wait for an instance (or for
    the dynamic batcher); ``compute_*_ms`` the backend's input copy, execution and output copy. For an
    ensemble, the composing models' entries show where its time went.
    """
    totals: dict[str, dict[str, list[int]]] = {}
    for key, now in after.items():
        then = before.get(key, {})
        slot = totals.setdefault(key[0], {phase: [0, 0] for phase in _STAT_PHASES})
        for phase, (count, ns) in now.items():
            slot[phase][0] += count - then.get(phase, (0, 0))[0]
            slot[phase][1] += ns - then.get(phase, (0, 0))[1]
    breakdown = {}
    for name, slot in sorted(totals.items()):
        requests = slot["success"][0]
        if requests > 0:
            breakdown[name] = {"requests": requests,
                               **{f"{phase}_ms": round(slot[phase][1] / requests / 1e6, 3) for phase in _STAT_PHASES}}
    return breakdown


def _settled_counters(metrics_url: str, model: str, before: BatchCounters | None, answered: int,
                      timeout_s: float = 2.0) -> BatchCounters | None:
    """Batch counters once the server has booked the answered requests and two reads agree.

    Triton books a request's statistics after its response is sent, so a read right after the last
    response can miss it. Gives up after ``timeout_s`` (a version unloaded mid-level never catches up).
    """
    deadline = time.monotonic() + timeout_s
    previous = read_batch_counters(metrics_url, model)
    while previous is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        current = read_batch_counters(metrics_url, model)
        if current is None:
            return previous
        booked = counter_delta(before, current)[0] if before is not None else answered
        if current == previous and booked >= answered:
            return current
        previous = current
    return previous


def _batched_model(config: LoadConfig) -> str:
    """The model whose batching is reported.

    ``batch_model`` if set, else the graph step of an ensemble (``<model>_onnx``), else the model itself
    (e.g. the local fast path of a text model).
    """
    if config.batch_model:
        return config.batch_model
    base = config.http_url if "://" in config.http_url else f"http://{config.http_url}"
    url = f"{base.rstrip('/')}/v2/models/{config.model}/config"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            platform = json.loads(response.read()).get("platform", "")
    except (OSError, ValueError):
        platform = "ensemble"
    return f"{config.model}_onnx" if platform == "ensemble" else config.model


class _Requests:
    """Builds request ``index`` (cycling through the inputs) with one tritonclient module's classes."""

    def __init__(self, config: LoadConfig, mod: Any) -> None:
        self.mod = mod
        self.columns: list[tuple[str, tuple[bytes, ...]]]
        if config.images is not None:
            self.columns = [(config.image_input, config.images)]
        else:
            self.columns = [(config.text_input, tuple(t.encode("utf-8") for t in config.texts))]
            if config.text_pairs:
                self.columns.append((config.text_pair_input, tuple(t.encode("utf-8") for t in config.text_pairs)))
        self.outputs = [mod.InferRequestedOutput(name) for name in config.outputs]

    def inputs(self, index: int) -> list[Any]:
        tensors = []
        for name, values in self.columns:
            tensor = self.mod.InferInput(name, [1, 1], "BYTES")
            item = np.empty((1, 1), dtype=object)
            item[0, 0] = values[index % len(values)]
            tensor.set_data_from_numpy(item)
            tensors.append(tensor)
        return tensors


def _version_of(result: Any) -> str:
    response = result.get_response()
    return str(response.get("model_version", "") if isinstance(response, dict) else response.model_version)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class _Tally:
    """Book-keeping of one level, shared by its workers: request budget, deadline, latencies, errors."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.issued = 0
        self.deadline = float("inf")
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.setup_errors: list[str] = []
        self.versions: Counter[str] = Counter()

    def claim(self) -> bool:
        """Take one request of the budget; False once it is spent, the time is up or set-up failed."""
        with self.lock:
            if self.setup_errors or self.issued >= self.config.requests or time.monotonic() >= self.deadline:
                return False
            self.issued += 1
            return True

    def done(self, started: float, version: str) -> None:
        elapsed = (time.perf_counter() - started) * 1000.0
        with self.lock:
            self.latencies.append(elapsed)
            self.versions[version] += 1

    def failed(self, exc: BaseException, *, setup: bool = False) -> None:
        with self.lock:
            (self.setup_errors if setup else self.errors).append(_error_text(exc))


def _http_worker(config: LoadConfig, concurrency: int, k: int, tally: _Tally, ready: threading.Barrier,
                 go: threading.Event) -> None:
    """One closed-loop HTTP client.

    tritonclient's HTTP client is gevent-based and bound to the thread that created it, so it is created,
    warmed up and closed in this thread.
    """
    import tritonclient.http as http

    client = None
    try:
        netloc = urlparse(config.http_url if "://" in config.http_url else f"http://{config.http_url}").netloc
        client = http.InferenceServerClient(netloc, network_timeout=config.timeout_s,
                                            connection_timeout=config.timeout_s)
        requests = _Requests(config, http)
        for i in range(k, config.warmup, concurrency):
            client.infer(config.model, requests.inputs(i), outputs=requests.outputs)
    except Exception as exc:
        tally.failed(exc, setup=True)
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(timeout=config.timeout_s * 2)
    go.wait(timeout=config.timeout_s * 2)
    i = k
    while client is not None and tally.claim():
        started = time.perf_counter()
        try:
            result = client.infer(config.model, requests.inputs(i), outputs=requests.outputs)
        except Exception as exc:
            tally.failed(exc)
        else:
            tally.done(started, _version_of(result))
        i += concurrency
    if client is not None:
        client.close()


def _grpc_workers(config: LoadConfig, concurrency: int, tally: _Tally, ready: threading.Barrier,
                  go: threading.Event) -> None:
    """``concurrency`` closed-loop coroutines over one asyncio gRPC channel, in this thread's event loop.

    One event loop instead of a thread and channel per worker: with 16 synchronous clients the Python
    client, not the server, limited the throughput (GIL, a poller thread per channel).
    """
    import tritonclient.grpc.aio as grpc_aio

    async def main() -> None:
        client = None
        requests = _Requests(config, grpc_aio)

        async def send(i: int) -> Any:
            assert client is not None
            return await client.infer(config.model, requests.inputs(i), outputs=requests.outputs,
                                      client_timeout=config.timeout_s)

        async def warm(k: int) -> None:
            for i in range(k, config.warmup, concurrency):
                await send(i)

        async def loop(k: int) -> None:
            i = k
            while tally.claim():
                started = time.perf_counter()
                try:
                    result = await send(i)
                except Exception as exc:
                    tally.failed(exc)
                else:
                    tally.done(started, _version_of(result))
                i += concurrency

        try:
            try:
                client = grpc_aio.InferenceServerClient(config.grpc_url)
                await asyncio.gather(*(warm(k) for k in range(concurrency)))
            except Exception as exc:
                tally.failed(exc, setup=True)
            with contextlib.suppress(threading.BrokenBarrierError):
                await asyncio.to_thread(ready.wait, config.timeout_s * 2)
            await asyncio.to_thread(go.wait, config.timeout_s * 2)
            await asyncio.gather(*(loop(k) for k in range(concurrency)))
        finally:
            if client is not None:
                await client.close()

    asyncio.run(main())


def _run_level(config: LoadConfig, protocol: str, concurrency: int) -> LevelResult:
    batch_model = _batched_model(config) if config.metrics_url else ""
    tally = _Tally(config)
    go = threading.Event()
    if protocol == "http":
        ready = threading.Barrier(concurrency + 1)
        threads = [threading.Thread(target=_http_worker, args=(config, concurrency, k, tally, ready, go),
                                    name=f"load-http-{k}", daemon=True) for k in range(concurrency)]
    else:
        ready = threading.Barrier(2)
        threads = [threading.Thread(target=_grpc_workers, args=(config, concurrency, tally, ready, go),
                                    name="load-grpc", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        ready.wait(timeout=config.timeout_s * 2)
    except threading.BrokenBarrierError:
        tally.setup_errors.append("workers did not get ready in time")
    before = (_settled_counters(config.metrics_url, batch_model, None, 0)
              if config.metrics_url and not tally.setup_errors else None)
    stats_before = read_inference_stats(config.http_url) if not tally.setup_errors else None
    tally.deadline = time.monotonic() + config.duration_s
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join(timeout=config.duration_s + config.timeout_s + 5)
    duration = time.perf_counter() - started
    if tally.setup_errors:
        target = config.http_url if protocol == "http" else config.grpc_url
        raise ServerUnavailableError(f"{config.model} at {target}: warm-up failed ({tally.setup_errors[0]})")
    latencies, errors = tally.latencies, tally.errors
    after = (_settled_counters(config.metrics_url, batch_model, before, len(latencies))
             if config.metrics_url and before else None)
    stats_after = read_inference_stats(config.http_url) if stats_before is not None else None
    avg_batch = executions = None
    if before and after:
        booked_inferences, booked_executions = counter_delta(before, after)
        if booked_executions > 0:
            executions = int(booked_executions)
            avg_batch = round(booked_inferences / booked_executions, 3)
    values = np.array(latencies) if latencies else np.array([np.nan])
    result = LevelResult(
        protocol=protocol, concurrency=concurrency, requests=len(latencies) + len(errors), errors=len(errors),
        duration_s=round(duration, 3), throughput_rps=round(len(latencies) / duration, 2) if duration else 0.0,
        p50_ms=round(float(np.percentile(values, 50)), 2), p95_ms=round(float(np.percentile(values, 95)), 2),
        p99_ms=round(float(np.percentile(values, 99)), 2), mean_ms=round(float(np.mean(values)), 2),
        server_avg_batch_size=avg_batch, server_executions=executions,
        server_ms=stats_breakdown(stats_before, stats_after) if stats_before and stats_after else None,
        versions_seen=dict(tally.versions),
        first_error=errors[0] if errors else None,
    )
    logger.info("%s c=%d: %.1f req/s, p50 %.1f ms, p99 %.1f ms, errors %d, server batch %s", protocol, concurrency,
                result.throughput_rps, result.p50_ms, result.p99_ms, result.errors, avg_batch)
    return result


def run_load(config: LoadConfig) -> LoadResult:
    """Sweep protocols x concurrency levels; each level bounded by count and time.

    Raises:
        ServerUnavailableError: The warm-up of a level failed (server down, model not loaded).
    """
    levels = [_run_level(config, protocol, c) for protocol in config.protocols for c in config.concurrency]
    return LoadResult(model=config.model, levels=levels)


class BackgroundLoad:
    """Run one level in a background thread (e.g. during a hot swap); ``stop()`` ends it early.

    Example::

        with BackgroundLoad(LoadConfig(..., concurrency=(16,), requests=10**6, duration_s=60)) as load:
            deploy_model(...)
        assert load.result.errors == 0
    """

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.result: LevelResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)

    def _run(self) -> None:
        try:
            self.result = _run_level(self.config, self.config.protocols[0], self.config.concurrency[0])
        except BaseException as exc:  # re-raised in stop()
            self._error = exc

    def start(self) -> BackgroundLoad:
        """Start sending."""
        self._thread.start()
        return self

    def stop(self) -> LevelResult:
        """Stop (by shortening the deadline) and return the level result."""
        self.config.requests = 0  # workers stop after their in-flight request
        self._thread.join(timeout=self.config.duration_s + self.config.timeout_s + 10)
        if self._error is not None:
            raise self._error
        assert self.result is not None
        return self.result

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive() or self.result is None:
            self.stop()
