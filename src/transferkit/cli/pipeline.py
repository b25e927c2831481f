"""`transferkit pipeline compile|run|submit`: the KFP pipeline from the command line.

The pipeline and its components live at the project root (``pipelines/``, ``components/``), outside the
runtime library, because they import kfp; these commands put the project root on ``sys.path``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from transferkit.cli._common import console, handle_errors
from transferkit.errors import ConfigError, PipelineError

app = typer.Typer(no_args_is_help=True)

COMPONENTS = ("data_prep", "fine_tune", "evaluate", "forgetting_check", "onnx_quantize", "deploy_triton",
              "select_strategy", "deploy_gate", "run_summary", "tune_search")
PIPELINE_YAML = Path("pipelines/transfer_learning/pipeline.yaml")


def project_root() -> Path:
    """Find the project root (holding ``pipelines/transfer_learning/pipeline.py``) and import from it."""
    candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[3]]
    for candidate in candidates:
        if (candidate / "pipelines" / "transfer_learning" / "pipeline.py").is_file():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return candidate
    raise PipelineError("pipelines/transfer_learning/pipeline.py not found; run from a transferkit checkout")


def load_params(path: Path | None) -> dict[str, Any]:
    """Read a YAML/JSON parameters file (a mapping of pipeline parameter names to values)."""
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter names to values")
    return data


_PARAMETER_TYPES = {
    "NUMBER_INTEGER": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "NUMBER_DOUBLE": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "STRING": ("a string", lambda v: isinstance(v, str)),
    "BOOLEAN": ("true or false", lambda v: isinstance(v, bool)),
    "LIST": ("a list", lambda v: isinstance(v, list)),
    "STRUCT": ("a mapping", lambda v: isinstance(v, dict)),
}


def check_params(params: dict[str, Any], package: Path) -> None:
    """Reject parameters the compiled pipeline does not declare, or of another type, before anything starts.

    Raises:
        ConfigError: Names the parameter, the value and the type the pipeline declares.
    """
    spec = yaml.safe_load(package.read_text(encoding="utf-8").split("\n---\n")[0])
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(declared))}")
    for name, value in params.items():
        expected, accepts = _PARAMETER_TYPES.get(declared[name].get("parameterType", ""), (None, None))
        if accepts is not None and not accepts(value):
            raise ConfigError(f"pipeline parameter {name}: {value!r} is not {expected} "
                              f"(declared {declared[name]['parameterType']})")


@app.command("compile")
@handle_errors
def compile_(
    config: Path | None = typer.Option(None, "--config", help="Placement YAML (GPUs, node selectors, PVCs, ...)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Pipeline YAML to write."),
    components: bool = typer.Option(True, "--components/--no-components", help="Also write component.yaml files."),
) -> None:
    """Compile the pipeline (and each component) to YAML for the Kubeflow UI or `kfp.Client`."""
    root = project_root()
    from kfp import compiler

    from pipelines.transfer_learning.pipeline import build_pipeline
    from transferkit.placement import load_placement

    placement = load_placement(config) if config else None
    target = output or root / PIPELINE_YAML
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(placement), str(target))
    console.print(f"Wrote {target}")
    if components and config is None:
        import importlib

        for name in COMPONENTS:
            module = importlib.import_module(f"components.{name}.component")
            path = root / "components" / name / "component.yaml"
            compiler.Compiler().compile(getattr(module, name), str(path))
            console.print(f"Wrote {path}")


@app.command("run")
@handle_errors
def run(
    local_run: bool = typer.Option(False, "--local", help="Run on this machine with kfp.local (required)."),
    params_file: Path | None = typer.Option(None, "--params", help="YAML/JSON file of pipeline parameters."),
    package: Path | None = typer.Option(None, "--package", help="Compiled pipeline (default: the checked-in one)."),
    work_dir: Path = typer.Option(Path("runs/local"), "--work-dir", help="Outputs, cache and model repository."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse identical steps from earlier runs."),
    serve: bool = typer.Option(False, "--serve", help="Keep Triton serving after the run until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Run the whole pipeline locally, ending with the model live in a local Triton server."""
    if not local_run:
        raise ConfigError("--local is required (use `transferkit pipeline submit` for a cluster)")
    root = project_root()
    from pipelines.transfer_learning.local_run import run_local

    pipeline_file = package or root / PIPELINE_YAML
    params = load_params(params_file)
    if pipeline_file.is_file():
        check_params(params, pipeline_file)
    result = run_local(params, package=pipeline_file, work_dir=work_dir.absolute(), caching=cache,
                       serve_forever=serve)
    if as_json:
        typer.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()},
                              default=str))
        return
    _print_summary(result)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_summary(result: Any) -> None:
    table = Table(title=f"Local run {result.status} in {result.seconds:.0f}s ({result.run_dir})")
    for column in ("step", "status", "seconds", "key results"):
        table.add_column(column)
    keys = {
        "data-prep": ("Output",), "fine-tune": ("validation_metric", "strategy"),
        "forgetting-check": ("passed", "retention"), "select-strategy": ("strategy", "retention"),
        "evaluate": ("primary", "accuracy"), "onnx-quantize": ("recommended_variant",),
        "deploy-gate": ("Output",), "deploy-triton": ("version", "endpoint"), "run-summary": ("Output",),
    }
    for name, task in result.tasks.items():
        outputs = result.outputs.get(name, {})
        base = next((k for k in keys if name.startswith(k)), None)
        shown = [f"{k}={_fmt(outputs[k])}" for k in keys.get(base, ()) if k in outputs]
        metrics = outputs.get("metrics") or {}
        # The recommended graph's figures (int8 for text, static QDQ int8 for images), beside fp32's size.
        chosen = outputs.get("recommended_variant") or "int8"
        for extra in (f"{chosen}_size_mb", "fp32_size_mb", f"{chosen}_latency_b1_p50_ms",
                      f"{chosen}_accuracy_drop_pt"):
            if extra in metrics:
                shown.append(f"{extra}={_fmt(metrics[extra])}")
        table.add_row(name, task["status"], f"{task['seconds']:.1f}", ", ".join(shown))
    console.print(table)
    if result.sample:
        sample = result.sample
        expected = f" (true label {sample['expected']}, image {sample['image']})" if "expected" in sample else ""
        console.print(f"Triton answer from {result.endpoint}: {sample['input']!r} -> "
                      f"{sample['label']} {sample['probabilities']}{expected}")
    else:
        console.print("Deploy was skipped: a gate did not pass (see the deploy-gate decision in the run outputs).")


@app.command("submit")
@handle_errors
def submit_(
    host: str = typer.Option(..., "--host", help="KFP API URL, e.g. https://kubeflow.example.com/pipeline."),
    experiment: str = typer.Option("transferkit", "--experiment", help="Experiment name (created if missing)."),
    params_file: Path | None = typer.Option(None, "--params", help="YAML/JSON file of pipeline parameters."),
    package: Path | None = typer.Option(None, "--package", help="Compiled pipeline (default: the checked-in one)."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run name."),
    namespace: str | None = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user)."),
) -> None:
    """Submit the compiled pipeline to Kubeflow Pipelines (token from $KFP_TOKEN)."""
    root = project_root()
    from pipelines.transfer_learning.submit import submit

    pipeline_file = package or root / PIPELINE_YAML
    params = load_params(params_file)
    if pipeline_file.is_file():
        check_params(params, pipeline_file)
    record = submit(pipeline_file, host=host, params=params, experiment=experiment, run_name=run_name,
                    namespace=namespace)
    console.print(f"Submitted run {record['run_id']} to experiment {record['experiment']}: {record['url']}")
