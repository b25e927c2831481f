"""`transferkit tune`: hyperparameter search over `train` with Optuna (resumable, pruned, parallel) or Katib."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


@handle_errors
def tune(
    data: str = typer.Option(..., "--data", help="Prepared dataset directory (transferkit data prepare); with "
                             "--katib, as the trial pods see it (mounted path or S3 URI)."),
    model: str = typer.Option(..., "--model", help="Base model: catalog name (minilm-l6) or model directory."),
    space: Path = typer.Option(..., "--space", help="Search space YAML (objective, fixed options, params)."),
    out: Path = typer.Option(..., "--out", help="Search directory: study.db, trials/, best_config.json. "
                             "Run again with the same directory to resume."),
    trials: int = typer.Option(12, "--trials", help="Trials to finish (completed or pruned), in total."),
    jobs: int = typer.Option(1, "--jobs", help="Trials in parallel (worker processes on one machine)."),
    pruner: str = typer.Option("median", "--pruner", help="median | hyperband | none (early stop from "
                               "validation curves; single objective only)."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed."),
    startup_trials: int = typer.Option(3, "--startup-trials", help="Trials before pruning/TPE start deciding."),
    prune_warmup_steps: int = typer.Option(0, "--prune-warmup-steps",
                                           help="Optimizer steps a trial runs before it can be pruned."),
    enqueue_defaults: bool = typer.Option(True, "--enqueue-defaults/--no-enqueue-defaults",
                                          help="First trial = the untuned (catalog default) configuration."),
    min_retention: float | None = typer.Option(None, "--min-retention",
                                               help="With `retention: true`: pick the best metric on the Pareto "
                                               "front among trials keeping this forgetting retention."),
    forgetting_source: str | None = typer.Option(None, "--forgetting-source",
                                                 help="Source set of the forgetting check (default: the model's)."),
    keep_trial_models: bool = typer.Option(False, "--keep-trial-models/--no-keep-trial-models",
                                           help="Keep every trial's model (default: the best/Pareto ones)."),
    study_name: str = typer.Option("transferkit", "--study-name", help="Study name inside study.db."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    katib: bool = typer.Option(False, "--katib", help="Run the search as a Katib Experiment on the cluster "
                               "(Kubeflow SDK OptimizerClient; trials are TrainJobs) instead of Optuna here."),
    trial_out: str | None = typer.Option(None, "--trial-out", help="--katib: output root as the trial pods see "
                                         "it (required); each trial writes <root>/trial-<hash>/model."),
    parallel: int = typer.Option(1, "--parallel", help="--katib: trials running at once."),
    namespace: str = typer.Option("transferkit", "--namespace", help="--katib: Kubernetes namespace."),
    runtime: str = typer.Option("torch-distributed", "--runtime", help="--katib: Kubeflow Trainer runtime."),
    image: str | None = typer.Option(None, "--image", help="--katib: trainer image (default: runtime[-cuda])."),
    nodes: int = typer.Option(1, "--nodes", help="--katib: nodes per trial."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="--katib: GPUs per node."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="--katib: kubeconfig file."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="--katib: follow the Experiment and write "
                              "<out>/best_config.json from its best trial."),
    timeout: float = typer.Option(86400.0, "--timeout", help="--katib: seconds to wait; the Experiment is "
                                  "deleted when they run out."),
) -> None:
    """Search train options; the best ones go to <out>/best_config.json."""
    if katib:
        _katib(data, model, space, out, trials, parallel, seed, namespace, runtime, image, nodes, gpus_per_node,
               kubeconfig, trial_out, forgetting_source, wait, timeout, as_json)
        return
    from transferkit.tune import TuneConfig, run_search

    result = run_search(TuneConfig(
        data_dir=Path(data), model=model, space=space, out_dir=out, trials=trials, jobs=jobs, pruner=pruner, seed=seed,
        startup_trials=startup_trials, prune_warmup_steps=prune_warmup_steps, enqueue_defaults=enqueue_defaults,
        min_retention=min_retention, forgetting_source=forgetting_source,
        keep_trial_models=keep_trial_models, study_name=study_name,
    ))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    best = result.best
    retention = "" if best["retention"] is None else f", retention {best['retention']:.3f}"
    console.print(f"best trial {best['number']}: {result.objective} {best['value']:.4f}{retention} "
                  f"({result.finished} finished, {result.pruned} pruned, {result.ran_now} run now, "
                  f"{result.wall_seconds:.0f} s)")
    for name, value in best["params"].items():
        console.print(f"  {name} = {value}")
    if result.pareto_front:
        console.print(f"Pareto front (metric vs retention): trials {result.pareto_front}")
    console.print(f"train with: transferkit train --data {data} --out MODEL_DIR "
                  f"{' '.join(json.loads(Path(result.best_config_path).read_text())['train_args'])}")
    console.print(f"best config: {result.best_config_path}")


def _katib(data: str, model: str, space: Path, out: Path, trials: int, parallel: int, seed: int,
           namespace: str, runtime: str, image: str | None, nodes: int, gpus_per_node: int,
           kubeconfig: str | None, trial_out: str | None, forgetting_source: str | None, wait: bool,
           timeout: float, as_json: bool) -> None:
    from transferkit.errors import ConfigError
    from transferkit.tune.katib import KatibConfig, submit_experiment, wait_for_experiment

    if not trial_out:
        raise ConfigError("--trial-out: required with --katib (the output root the trial pods write to)")
    config = KatibConfig(data=data, model=model, space=space, out_root=trial_out, trials=trials, parallel=parallel,
                         namespace=namespace, runtime=runtime, image=image, nodes=nodes,
                         gpus_per_node=gpus_per_node, seed=seed, kubeconfig=kubeconfig,
                         forgetting_source=forgetting_source)
    record = submit_experiment(config)
    if wait:
        record["best"] = wait_for_experiment(config, record["name"], out, timeout_s=timeout)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    console.print(f"Katib Experiment {record['namespace']}/{record['name']} created")
    if wait:
        best = record["best"]
        console.print(f"best trial: {best['objective']} {best['value']:.4f}; train with: transferkit train "
                      f"--data {data} --out MODEL_DIR {' '.join(best['train_args'])}")
        console.print(f"best config: {out / 'best_config.json'}")
