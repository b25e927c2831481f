"""Run the compiled pipeline on this machine with kfp.local, deploying to a local Triton server."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import PipelineError

logger = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(r"Task (\S+) cache hit(?: \(key=([0-9a-f]+)\))?")
_PIPELINE_END = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")

LOCAL_DEFAULTS: dict[str, Any] = {
    # One machine, no GPU: a CPU instance group and a deploy into the local Triton started for the run;
    # one epoch keeps `make demo` within ~10 minutes on 2 cores (override with --params).
    "epochs": 1.0,
    "instance_kind": "cpu",
    "deploy_mode": "triton",
    "model_name": "transferkit-model",
}


class _TaskTimer(logging.Filter):
    """Collects per-task wall times from kfp.local's log lines (it offers no other hook).

    Installed as a filter on the root logger because kfp.local replaces the root handlers while it runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started: dict[str, float] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.cache_keys: dict[str, str] = {}  # cached task -> the start of its kfp.local cache key
        self.pipeline_status: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        self._observe(record)
        return True

    def _observe(self, record: logging.LogRecord) -> None:
        message = _ANSI.sub("", record.getMessage())
        if match := _START.search(message):
            self.started[match.group(1)] = record.created
        elif match := _END.search(message):
            name = match.group(1)
            start = self.started.get(name, record.created)
            self.tasks[name] = {"status": match.group(2), "seconds": round(record.created - start, 2)}
        elif match := _CACHED.search(message):
            self.tasks[match.group(1)] = {"status": "CACHED", "seconds": 0.0}
            if match.group(2):
                self.cache_keys[match.group(1)] = match.group(2)
        elif match := _PIPELINE_END.search(message):
            self.pipeline_status = match.group(2)


@dataclass
class LocalRunResult:
    """What a local run did: per-task status, time and outputs, and where the model is served."""

    status: str
    seconds: float
    run_dir: Path
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoint: str | None = None
    model_name: str | None = None
    sample: dict[str, Any] | None = None
    monitor_url: str | None = None


def _latest_run_dir(pipeline_root: Path, before: set[Path]) -> Path:
    runs = [p for p in pipeline_root.iterdir() if p.is_dir() and p not in before]
    if not runs:
        raise PipelineError(f"{pipeline_root}: kfp.local wrote no run directory")
    return max(runs, key=lambda p: p.stat().st_mtime)


def collect_outputs(run_dir: Path, cached: dict[str, str] | None = None,
                    cache_root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Read every task's parameter outputs and artifact metadata from a kfp.local run directory.

    Tasks served from the local cache write nothing into the run directory; their outputs are read from the cache
    entry (``cached``: task -> the start of its cache key, as kfp.local logs it; ``cache_root``: the cache).
    """
    outputs: dict[str, dict[str, Any]] = {}
    for executor_output in sorted(run_dir.rglob("executor_output.json")):
        task = executor_output.parent.name
        try:
            data = json.loads(executor_output.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        values: dict[str, Any] = dict(data.get("parameterValues") or {})
        for name, artifact_list in (data.get("artifacts") or {}).items():
            for artifact in artifact_list.get("artifacts", []):
                metadata = artifact.get("metadata") or {}
                values[name] = {"uri": artifact.get("uri"), **metadata}
        outputs[task] = values
    for task, key in (cached or {}).items():
        entries = sorted(cache_root.glob(f"{key}*.json")) if cache_root and key else []
        if task in outputs or len(entries) != 1:
            continue
        try:
            entry = json.loads(entries[0].read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        outputs[task] = {name: {"uri": value.get("uri"), **(value.get("metadata") or {})}
                         if isinstance(value, dict) and value.get("__kfp_artifact__") else value
                         for name, value in entry.items()}
    return outputs


def start_monitor(outputs: dict[str, dict[str, Any]], model_name: str, *, port: int, report_dir: Path,
                  host: str = "127.0.0.1") -> Any:
    """Start ``transferkit monitor`` on the baseline of the run's export (the onnx-quantize output).

    Returns:
        The running :class:`~transferkit.monitor.service.MonitorServer` (call ``shutdown()``), or None when the
        export has no baseline (a task without drift monitoring).
    """
    from transferkit.monitor import DriftConfig, load_baseline
    from transferkit.monitor.service import MonitorServer
    from transferkit.monitor.state import Monitor

    uri = ((outputs.get("onnx-quantize") or {}).get("onnx_model") or {}).get("uri")
    if not uri or not (Path(uri) / "monitor_baseline").is_dir():
        logger.warning("No monitoring baseline in the run's export (%s); the monitor is not started", uri)
        return None
    server = MonitorServer(Monitor(load_baseline(uri), DriftConfig(), report_dir, model=model_name), host, port)
    return server.__enter__()


def run_local(
    params: dict[str, Any],
    *,
    package: Path,
    work_dir: Path,
    caching: bool = True,
    serve_forever: bool = False,
    sample_text: str = "A warm, funny and beautifully acted film.",
    monitor_sample_rate: float = 1.0,
    monitor_port: int = 0,
    on_serving: Callable[[LocalRunResult], None] | None = None,
    stop: threading.Event | None = None,
) -> LocalRunResult:
    """Run the compiled pipeline ``package`` with kfp.local and a local Triton for the deploy step.

    With ``serve_forever`` the deploy samples ``monitor_sample_rate`` of the served traffic to a
    ``transferkit monitor`` started on the export's baseline once the run has deployed (on ``monitor_port``;
    reports in ``work_dir/monitor``), beside Triton until interrupted; both are stopped on the way out. The sample
    answer of the run reaches the monitor; items the deploy's own checks sampled before the monitor was up may be
    dropped (as for an absent monitor) or delivered late, depending on timing.

    Args:
        params: Pipeline parameters overriding the defaults (see ``pipeline.py``).
        package: The compiled ``pipeline.yaml``.
        work_dir: Holds ``pipeline_root/``, ``cache/`` and ``model_repository/`` across runs.
        caching: Reuse results of identical steps from earlier runs (deploy is never cached).
        serve_forever: Keep Triton (and the monitor) running after the run until interrupted or ``stop`` is set.
        sample_text: Sentence sent to a deployed text classifier at the end (the task registry's ``sample_request``:
            image models get the first test image, generative models stream an answer to the first test pair).
        monitor_sample_rate: Fraction of served items sent to the monitor with ``serve_forever`` (0: no monitor;
            ignored when ``params`` name a ``monitor_url`` of their own).
        monitor_port: Monitor port (0 picks a free one).
        on_serving: Called with the result once the model (and monitor) serve, before waiting.
        stop: Ends serving when set (besides Ctrl-C).

    Raises:
        PipelineError: The package is missing or a step failed.
    """
    from kfp import components, local

    from transferkit.errors import ConfigError
    from transferkit.serve.local import LocalTriton, check_ports, check_ports_free, free_port

    if not 0.0 <= monitor_sample_rate <= 1.0:
        raise ConfigError(f"monitor_sample_rate: expected a fraction in [0, 1], got {monitor_sample_rate}")
    monitor_url = None
    if serve_forever and monitor_sample_rate > 0 and not params.get("monitor_url"):
        check_ports(monitor_port=monitor_port)
        check_ports_free("127.0.0.1", monitor_port=monitor_port)
        monitor_port = monitor_port or free_port()
        monitor_url = f"http://127.0.0.1:{monitor_port}"
        params = {**params, "monitor_url": monitor_url, "monitor_sample_rate": float(monitor_sample_rate)}
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found; run `make compile`")
    pipeline_root, repository = work_dir / "pipeline_root", work_dir / "model_repository"
    for path in (pipeline_root, repository):
        path.mkdir(parents=True, exist_ok=True)
    pipeline = components.load_component_from_file(str(package))
    timer = _TaskTimer()
    root_logger = logging.getLogger()
    root_level = root_logger.level
    # kfp.local reports cache hits at INFO on the root logger; the timer only sees records that get created.
    root_logger.setLevel(min(root_level or logging.WARNING, logging.INFO))
    root_logger.addFilter(timer)
    before = set(pipeline_root.iterdir())
    started = time.perf_counter()
    with LocalTriton(repository) as server:
        arguments = {**LOCAL_DEFAULTS, **params, "triton_url": server.http_url, "repository": str(repository)}
        local.init(
            runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
            enable_caching=caching, cache_root=str(work_dir / "cache"), raise_on_error=False,
        )
        try:
            pipeline(**arguments)
        finally:
            root_logger.removeFilter(timer)
            root_logger.setLevel(root_level)
        run_dir = _latest_run_dir(pipeline_root, before)
        result = LocalRunResult(
            status=timer.pipeline_status or "UNKNOWN", seconds=round(time.perf_counter() - started, 1),
            run_dir=run_dir, tasks=timer.tasks,
            outputs=collect_outputs(run_dir, timer.cache_keys, work_dir / "cache"),
            model_name=str(arguments["model_name"]),
        )
        failed = [name for name, task in timer.tasks.items() if task["status"] not in ("SUCCESS", "CACHED")]
        if result.status != "SUCCESS" or failed:
            raise PipelineError(
                f"local run failed at task(s) {', '.join(failed) or 'unknown'}; logs above, outputs in {run_dir}"
            )
        deployed = any(name.startswith("deploy-triton") for name in timer.tasks)
        # The monitor starts before the sample answer below, which is then its first record; the deploy's own
        # checks ran before it was up and were dropped by the server.
        monitor = None
        if deployed and serve_forever and monitor_url:
            monitor = start_monitor(result.outputs, str(result.model_name), port=monitor_port,
                                    report_dir=work_dir / "monitor")
            result.monitor_url = monitor.url if monitor is not None else None
        try:
            if deployed:
                # The deploy step's endpoint: the ensemble's infer (classifiers) or generate (generative models).
                result.endpoint = ((result.outputs.get("deploy-triton") or {}).get("endpoint")
                                   or f"{server.http_url}/v2/models/{result.model_name}/infer")
                _sample(result, server.http_url, str(arguments.get("task") or ""), work_dir, sample_text)
            if serve_forever:
                _serve(server, result, report_dir=work_dir / "monitor", on_serving=on_serving,
                       stop=stop or threading.Event())
        finally:
            if monitor is not None:
                monitor.shutdown()
    return result


def _artifact_dir(outputs: dict[str, dict[str, Any]], task: str, name: str) -> Path | None:
    """The local directory of artifact ``name`` output by ``task`` (None when the run has none)."""
    uri = ((outputs.get(task) or {}).get(name) or {}).get("uri")
    return Path(uri) if uri else None


def _sample(result: LocalRunResult, http_url: str, task: str, work_dir: Path, sample_text: str) -> None:
    """Ask the deployed model once, as its task says (a sentence, the first test image, a streamed summary)."""
    from transferkit.tasks import DEFAULT_TASK, get_task

    result.sample = get_task(task or DEFAULT_TASK).sample_request(
        http_url, str(result.model_name), dataset_dir=_artifact_dir(result.outputs, "data-prep", "dataset"),
        export_dir=_artifact_dir(result.outputs, "onnx-quantize", "onnx_model"), work_dir=work_dir,
        sample_text=sample_text)


def _serve(server: Any, result: LocalRunResult, *, report_dir: Path,
           on_serving: Callable[[LocalRunResult], None] | None, stop: threading.Event) -> None:
    """Keep Triton up until Ctrl-C or ``stop`` (the caller stops the monitor afterwards)."""
    try:
        logger.info("Serving %s at %s%s; press Ctrl-C to stop", result.model_name, server.http_url,
                    f", monitor at {result.monitor_url} (reports in {report_dir})" if result.monitor_url else "")
        if on_serving is not None:
            on_serving(result)
        while server.running and not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        logger.info("Stopping the local Triton server%s", " and the monitor" if result.monitor_url else "")
