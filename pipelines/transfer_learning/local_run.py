"""Run the compiled pipeline on this machine with kfp.local, deploying to a local Triton server."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import PipelineError

logger = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(r"Task (\S+) cache hit")
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


def _latest_run_dir(pipeline_root: Path, before: set[Path]) -> Path:
    runs = [p for p in pipeline_root.iterdir() if p.is_dir() and p not in before]
    if not runs:
        raise PipelineError(f"{pipeline_root}: kfp.local wrote no run directory")
    return max(runs, key=lambda p: p.stat().st_mtime)


def collect_outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Read every task's parameter outputs and artifact metadata from a kfp.local run directory."""
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
    return outputs


def sample_inference(http_url: str, model_name: str, *, text: str | None = None,
                     image: bytes | None = None) -> dict[str, Any]:
    """Send one raw sentence or one encoded image to the deployed ensemble; return its label and probabilities."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    name, payload = ("text", text.encode("utf-8")) if text is not None else ("image", image)
    batch = np.empty((1, 1), dtype=object)
    batch[0, 0] = payload
    request = httpclient.InferInput(name, list(batch.shape), "BYTES")
    request.set_data_from_numpy(batch)
    response = client.infer(model_name, [request])
    label = response.as_numpy("label").reshape(-1)[0]
    return {
        "input": text if text is not None else f"PNG image ({len(payload)} bytes)",
        "label": label.decode() if isinstance(label, bytes) else str(label),
        "probabilities": [round(float(v), 4) for v in response.as_numpy("probabilities").reshape(-1)],
    }


def sample_image(outputs: dict[str, dict[str, Any]], work_dir: Path) -> tuple[bytes, str, Path]:
    """The first test image of the run's prepared dataset: (PNG bytes, true label, a copy saved as PNG).

    Raises:
        PipelineError: The run has no prepared image dataset.
    """
    import pyarrow.parquet as pq

    uri = ((outputs.get("data-prep") or {}).get("dataset") or {}).get("uri")
    if not uri:
        raise PipelineError("the run has no data-prep dataset output to take a sample image from")
    table = pq.read_table(Path(uri) / "test.parquet", columns=["image", "label_name"]).slice(0, 1)
    data, label = table.column("image")[0].as_py(), table.column("label_name")[0].as_py()
    path = work_dir / "sample.png"
    path.write_bytes(data)
    return data, str(label), path


def run_local(
    params: dict[str, Any],
    *,
    package: Path,
    work_dir: Path,
    caching: bool = True,
    serve_forever: bool = False,
    sample_text: str = "A warm, funny and beautifully acted film.",
) -> LocalRunResult:
    """Run the compiled pipeline ``package`` with kfp.local and a local Triton for the deploy step.

    Args:
        params: Pipeline parameters overriding the defaults (see ``pipeline.py``).
        package: The compiled ``pipeline.yaml``.
        work_dir: Holds ``pipeline_root/``, ``cache/`` and ``model_repository/`` across runs.
        caching: Reuse results of identical steps from earlier runs (deploy is never cached).
        serve_forever: Keep Triton running after the run until interrupted.
        sample_text: Sentence sent to a deployed text model at the end (image models get the first test image).

    Raises:
        PipelineError: The package is missing or a step failed.
    """
    from kfp import components, local

    from transferkit.serve.local import LocalTriton

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
            run_dir=run_dir, tasks=timer.tasks, outputs=collect_outputs(run_dir),
            model_name=str(arguments["model_name"]),
        )
        failed = [name for name, task in timer.tasks.items() if task["status"] not in ("SUCCESS", "CACHED")]
        if result.status != "SUCCESS" or failed:
            raise PipelineError(
                f"local run failed at task(s) {', '.join(failed) or 'unknown'}; logs above, outputs in {run_dir}"
            )
        if any(name.startswith("deploy-triton") for name in timer.tasks):
            result.endpoint = f"{server.http_url}/v2/models/{result.model_name}/infer"
            from transferkit.tasks import DEFAULT_TASK, get_task

            if get_task(arguments.get("task") or DEFAULT_TASK).modality == "image":
                image, expected, path = sample_image(result.outputs, work_dir)
                result.sample = sample_inference(server.http_url, result.model_name, image=image)
                result.sample.update(expected=expected, image=str(path))
            else:
                result.sample = sample_inference(server.http_url, result.model_name, text=sample_text)
        if serve_forever:
            logger.info("Serving %s at %s; press Ctrl-C to stop", result.model_name, server.http_url)
            try:
                while server.running:
                    time.sleep(1)
            except KeyboardInterrupt:
                logger.info("Stopping the local Triton server")
    return result
