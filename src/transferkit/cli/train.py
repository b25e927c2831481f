"""`transferkit train`: fine-tune a base model on a prepared dataset with a transfer strategy."""

from __future__ import annotations

import inspect
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from transferkit.cli._common import console, handle_errors
from transferkit.errors import ConfigError, TrainingError
from transferkit.options import split_options, with_config_options
from transferkit.train.config import TrainConfig, config_to_cli_args


class Launcher(StrEnum):
    """Where the training processes run."""

    local = "local"
    trainjob = "trainjob"


_LAUNCH_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
    for name, annotation, default in (
        ("nproc_per_node", int, typer.Option(1, "--nproc-per-node", help="Processes on this node (torchrun).")),
        ("launcher", Launcher, typer.Option(Launcher.local, "--launcher", help="local | trainjob (Kubeflow Trainer).")),
        ("nodes", int, typer.Option(1, "--nodes", help="trainjob: number of nodes.")),
        ("gpus_per_node", int, typer.Option(1, "--gpus-per-node", help="trainjob: GPUs per node.")),
        ("namespace", str, typer.Option("transferkit", "--namespace", help="trainjob: Kubernetes namespace.")),
        ("checkpoint_pvc", str | None, typer.Option(None, "--checkpoint-pvc", help="trainjob: PVC for checkpoints.")),
        ("output_pvc", str | None, typer.Option(None, "--output-pvc", help="trainjob: PVC for the output.")),
        ("wait", bool, typer.Option(True, "--wait/--no-wait", help="trainjob: wait for completion.")),
        ("timeout", float, typer.Option(86400.0, "--timeout", help="trainjob: seconds to wait.")),
        ("as_json", bool, typer.Option(False, "--json", help="Print the result as one line of JSON.")),
    )
]


@handle_errors
@with_config_options(TrainConfig, _LAUNCH_OPTIONS)
def train(**options: Any) -> None:
    """Fine-tune a base model with a transfer strategy; write a model directory.

    The training options are ``TrainConfig``'s fields (declared there once); the rest say where it runs.
    """
    config_values, launch = split_options(TrainConfig, options)
    config = TrainConfig(**config_values)
    nproc_per_node, launcher, nodes, gpus_per_node = (
        launch["nproc_per_node"], launch["launcher"], launch["nodes"], launch["gpus_per_node"])
    namespace, checkpoint_pvc, output_pvc = launch["namespace"], launch["checkpoint_pvc"], launch["output_pvc"]
    wait, timeout, as_json, out = launch["wait"], launch["timeout"], launch["as_json"], config.out_dir
    if nproc_per_node < 1:
        raise ConfigError(f"nproc_per_node: expected an integer >= 1, got {nproc_per_node}")
    if launcher == Launcher.trainjob:
        if nodes < 1 or gpus_per_node < 0:
            raise ConfigError(f"nodes/gpus_per_node: expected nodes >= 1 and gpus >= 0, got {nodes}/{gpus_per_node}")
        try:
            from transferkit.train.trainjob import submit_train_job
        except ImportError as exc:
            raise TrainingError(
                f"--launcher trainjob: the trainjob launcher is unavailable in this installation ({exc})"
            ) from exc
        record = submit_train_job(
            config_to_cli_args(config), nodes=nodes, gpus_per_node=gpus_per_node, namespace=namespace,
            checkpoint_pvc=checkpoint_pvc, output_pvc=output_pvc, wait=wait, timeout_s=timeout,
        )
        if as_json:
            typer.echo(json.dumps(record, default=str))
        else:
            console.print(f"TrainJob submitted: {json.dumps(record, default=str)}")
        return

    from transferkit.train.distributed import in_distributed_child, launch_torchrun

    if nproc_per_node > 1 and not in_distributed_child():
        launch_torchrun(config_to_cli_args(config), nproc_per_node)
        summary = out / "training_summary.json"
        if as_json and summary.is_file():
            typer.echo(json.dumps(json.loads(summary.read_text(encoding="utf-8"))))
        else:
            console.print(f"Wrote {out} ({nproc_per_node} processes)")
        return

    from transferkit.train import run_training

    result = run_training(config)
    if not result.written:
        return
    if as_json:
        # One line, last on stdout, so callers can parse it even after log output.
        typer.echo(json.dumps(result.to_dict(), default=str))
        return
    best = "n/a" if result.best_metric_value is None else f"{result.best_metric_value:.4f}"
    console.print(
        f"Wrote {result.out_dir}: strategy {result.strategy}, validation {result.best_metric_name} {best}, "
        f"stop {result.stop_reason}, {result.trainable_params:,}/{result.total_params:,} params trained, "
        f"{result.wall_time_s:.1f}s on {result.device}"
    )
    inputs = _text_inputs_line(result.out_dir)
    if inputs:
        console.print(inputs)
    for warning in result.warnings:
        console.print(f"warning: {warning}")


def _text_inputs_line(out_dir: Path) -> str | None:
    """``inputs: max_length 96 (auto ...), head_tail truncation`` from a text model's training summary."""
    summary = Path(out_dir) / "training_summary.json"
    if not summary.is_file():
        return None
    resolved = json.loads(summary.read_text(encoding="utf-8")).get("resolved") or {}
    if "long_documents" not in resolved:
        return None
    from transferkit.data.long_text import TextInputs

    source = " (auto: 95th percentile of the training texts' token lengths)" if resolved.get(
        "max_length_source") == "auto" else ""
    spec = TextInputs.from_dict(resolved)
    return f"inputs: max_length {spec.max_length}{source}; {spec.describe()}"
