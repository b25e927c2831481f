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
              "select_strategy", "deploy_gate", "run_summary", "prune_model", "tune_search")
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
    try:
        spec = yaml.safe_load(package.read_text(encoding="utf-8").split("\n---\n")[0])
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{package}: not a compiled pipeline (unreadable YAML: {str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict) or "root" not in spec:
        raise ConfigError(f"{package}: not a compiled pipeline (expected KFP pipeline YAML with a 'root' section)")
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(declared))}")
    for name, value in params.items():
        expected, accepts = _PARAMETER_TYPES.get(declared[name].get("parameterType", ""), (None, None))
        if accepts is not None and not accepts(value):
            raise ConfigError(f"pipeline parameter {name}: {value!r} is not {expected} "
                              f"(declared {declared[name]['parameterType']})")
    for name, value in params.items():
        problem = _value_problem(name, value)
        if problem:
            raise ConfigError(f"pipeline parameter {name}: {value!r} {problem}")


def _value_problem(name: str, value: Any) -> str | None:
    """What is wrong with a parameter's value (ranges, choices, local paths), checked before any step starts.

    KFP parameters cannot be None, so 0 / -1 / "" stand for "not given" where the pipeline says so; those pass.
    """
    from transferkit.export.config import CPU_ISAS, TARGETS
    from transferkit.serve.repository import validate_model_name
    from transferkit.tasks import task_names
    from transferkit.train.config import STRATEGIES

    choices = {"task": task_names(), "export_target": TARGETS, "export_cpu_isa": CPU_ISAS,
               "deploy_mode": ("triton", "gitops", "kserve"), "instance_kind": ("gpu", "cpu")}
    ranges = {"max_rows": (0, None), "max_steps": (0, None), "batch_size": (0, None), "max_length": (0, None),
              "image_size": (0, None), "early_stopping_patience": (0, None), "seed": (0, None),
              "nproc_per_node": (1, None), "epochs": (1e-9, None), "learning_rate": (0, None), "llrd": (1e-9, 1),
              "l2sp": (0, None), "min_primary": (0, 1), "forgetting_min_retention": (0, 1.5),
              "min_agreement": (0, 1), "max_quantization_drop": (0, 100), "generation_concurrency": (1, None),
              "monitor_sample_rate": (0, 1), "student_layers": (0, None), "distill_alpha": (0, 1),
              "distill_temperature": (1e-9, None)}
    if name in choices and value not in choices[name]:
        return f"is not one of {', '.join(choices[name])}"
    if name in ranges:
        low, high = ranges[name]
        if value < low or (high is not None and value > high):
            return f"is outside [{low:g}, {'inf' if high is None else f'{high:g}'}]"
    if name == "strategies":
        unknown = [s for s in value if s not in STRATEGIES]
        if not value or unknown:
            return f"is not a non-empty list of strategies from {', '.join(STRATEGIES)}"
    if name == "model_name":
        try:
            validate_model_name(value, field_name="model_name")
        except ConfigError:
            return "is not a model name (1-63 letters, digits, '_', '.', '-', starting with a letter or digit)"
    if name == "dataset_uri" and "://" not in value and not value.startswith("builtin:") and not Path(value).exists():
        return "does not exist (expected a local path, s3://bucket/key or builtin:NAME)"
    return None


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
    serve: bool = typer.Option(False, "--serve", help="Keep Triton serving after the run until Ctrl-C, with "
                               "`transferkit monitor` beside it."),
    monitor_sample_rate: float = typer.Option(1.0, help="With --serve: fraction of served items sent to the monitor "
                                              "(0: no monitor)."),
    monitor_port: int = typer.Option(0, help="With --serve: the monitor's port (0 picks a free one)."),
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
    if work_dir.exists() and not work_dir.is_dir():
        raise ConfigError(f"work_dir: {work_dir} exists and is not a directory")
    printed: list[Any] = []

    def serving(result: Any) -> None:  # with --serve: the summary while it serves, not after Ctrl-C
        if not as_json:
            _print_summary(result)
            printed.append(result)

    result = run_local(params, package=pipeline_file, work_dir=work_dir.absolute(), caching=cache,
                       serve_forever=serve, monitor_sample_rate=monitor_sample_rate, monitor_port=monitor_port,
                       on_serving=serving)
    if printed:
        return
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
        "prune-model": ("pruned",), "evaluate": ("primary", "accuracy"), "onnx-quantize": ("recommended_variant",),
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
        _print_sample(result.sample, result.endpoint)
        if result.monitor_url:
            url = result.monitor_url
            console.print(f"Monitor of the served traffic: {url}/metrics, {url}/v1/windows")
    else:
        console.print("Deploy was skipped: a gate did not pass (see the deploy-gate decision in the run outputs).")


def _print_sample(sample: dict[str, Any], endpoint: str | None) -> None:
    """The deployed model's sample answer: a label with probabilities, or a streamed text with its timing."""
    from rich.markup import escape

    if "generated" in sample:  # a generative model's streamed answer (the task's sample_request)
        message = " ".join(str(sample["input"]).split())
        shown = message if len(message) <= 300 else f"{message[:240]} ... {message[-50:]}"
        console.print(f"Triton streamed from {sample.get('endpoint') or endpoint}: {sample['tokens']} tokens, first "
                      f"after {sample['ttft_ms']:.0f} ms, {sample['seconds']:.1f} s in all "
                      f"({sample['prompt_tokens']} prompt tokens)")
        console.print(f"  input:     {escape(shown)}")
        console.print(f"  generated: {escape(str(sample['generated']))}")
        console.print(f"  reference: {escape(str(sample['reference']))}")
        return
    expected = f" (true label {sample['expected']}, image {sample['image']})" if "expected" in sample else ""
    console.print(f"Triton answer from {endpoint}: {sample['input']!r} -> "
                  f"{sample['label']} {sample['probabilities']}{expected}")


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
