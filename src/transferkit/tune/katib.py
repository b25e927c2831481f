"""The same search space as a Katib Experiment, through the Kubeflow SDK (``kubeflow.optimizer.OptimizerClient``).

``transferkit tune --katib ...`` lands here. Every Katib trial is a Kubeflow Trainer TrainJob built by the SDK
from a ``CustomTrainer``: the SDK embeds :func:`transferkit_trial` into the torch runtime's command (``torchrun``
on every node), Katib substitutes the trial's parameter values into its arguments, and the function runs
``transferkit train`` in-process (each torch rank, as ``--launcher trainjob`` does), then rank 0 prints the
validation metrics as ``name=value`` lines, which Katib's default StdOut metrics collector reads. With
``retention: true`` rank 0 also runs the forgetting check and prints ``retention=<value>`` (an additional
metric: Katib optimises one objective, so the Pareto front is read from the trials afterwards).

What the SDK (0.5.0) could not do, and how this module deals with it:

- ``Search`` has no integer or stepped ranges: those are built as Katib ``int``/``double`` parameter specs
  with the SDK's own Katib models (``kubeflow_katib_api``), which is what ``Search`` returns too.
- Only ``RandomSearch`` and ``GridSearch`` are exposed (no TPE, no early stopping): trials are not pruned on the
  cluster; the local Optuna search (:mod:`transferkit.tune.search`) is the one that prunes.
- A ``TrainJobTemplate`` has no volumes or pod overrides: the dataset and the output root must be paths the
  runtime's pods already mount (a namespaced ``TrainingRuntime`` mounting the platform's PVCs) or S3 URIs.
- ``OptimizerClient`` takes no kubeconfig path; a :class:`KubernetesBackendConfig` carries it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, TuneError
from transferkit.io import write_json
from transferkit.tune.space import SearchSpace, load_space

logger = logging.getLogger(__name__)

DEFAULT_RUNTIME = "torch-distributed"
# Characters the SDK's command (a bash heredoc around the function's source) would expand or mangle.
_SHELL_SPECIAL = ("$", "`", "\\", "EOM")


def transferkit_trial(train_args: list, out_root: str, flags: dict, forgetting_args: list | None = None,
                      **params: object) -> None:
    """Body of one Katib trial (its source is embedded into the TrainJob command by the Kubeflow SDK).

    Self-contained on purpose (the SDK copies only this function's source into a script): imports inside,
    builtin annotations only (nothing is imported at module level there), no closures, and no dollar signs,
    backticks or backslashes (the SDK wraps the source in an unquoted bash heredoc).

    Args:
        train_args: 'transferkit train' arguments shared by every trial (no '--out').
        out_root: Directory under which each trial writes 'trial-<hash of its parameters>'.
        flags: '{parameter: train flag}' of the searched parameters.
        forgetting_args: 'transferkit forgetting' arguments (no '--model'/'--out') when retention is an
            objective, else None.
        **params: The trial's parameter values, as Katib substitutes them (strings).

    """
    import hashlib
    import json
    import os
    import sys

    from transferkit.cli.main import app

    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    out = os.path.join(out_root, "trial-" + key)
    argv = ["train", *train_args, "--out", os.path.join(out, "model")]
    for name in sorted(params):
        argv += [flags[name], str(params[name])]
    app(argv, standalone_mode=False)
    if os.environ.get("RANK", "0") != "0":
        return
    with open(os.path.join(out, "model", "training_summary.json"), encoding="utf-8") as handle:
        validation = json.load(handle)["validation"]
    if forgetting_args is not None:
        report = os.path.join(out, "forgetting")
        app(["forgetting", *forgetting_args, "--model", os.path.join(out, "model"), "--out", report,
             "--report-only"], standalone_mode=False)
        with open(os.path.join(report, "forgetting.json"), encoding="utf-8") as handle:
            validation["retention"] = json.load(handle)["retention"]
    for name in sorted(validation):
        value = validation[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Katib's StdOut metrics collector reads these lines (the metric protocol, not logging).
            sys.stdout.write(name + "=" + repr(float(value)) + chr(10))
    sys.stdout.flush()


@dataclass
class KatibConfig:
    """A Katib Experiment over ``space``; validated on construction (``ConfigError`` names the field).

    Attributes:
        data: Prepared dataset directory as the trial pods see it (a mounted PVC path or an S3 URI).
        model: Base model (catalog name or a directory the pods see).
        space: The ``space.yaml`` file (the one the local search takes).
        out_root: Output root as the pods see it; trial ``k`` writes ``<out_root>/trial-<hash>/model``.
        trials: Trials Katib runs (``maxTrialCount``).
        parallel: Trials running at once (``parallelTrialCount``).
        max_failed: Failed trials before the Experiment fails (None: Katib's default).
        namespace: Namespace of the Experiment (None: the kubeconfig context's).
        runtime: Kubeflow Trainer runtime of the trials.
        image: Trainer image; default: the runtime-cuda image with GPUs, else the CPU runtime image.
        nodes: Nodes per trial.
        gpus_per_node: GPUs per node (0: CPU).
        cpu_per_node, memory_per_node: Requests per node (Kubernetes quantities), optional.
        env: Extra environment variables of the trial containers.
        seed: Seed of Katib's random search.
        kubeconfig: Kubeconfig file (None: ``$KUBECONFIG``/in-cluster).
        forgetting_source: Source set of the forgetting check (``retention: true``).

    """

    data: str
    model: str
    space: Path
    out_root: str
    trials: int = 12
    parallel: int = 1
    max_failed: int | None = None
    namespace: str | None = None
    runtime: str = DEFAULT_RUNTIME
    image: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpu_per_node: str | None = None
    memory_per_node: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    kubeconfig: str | None = None
    forgetting_source: str | None = None

    def __post_init__(self) -> None:
        self.space = Path(self.space)
        for name in ("trials", "parallel", "nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        if isinstance(self.gpus_per_node, bool) or not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 0:
            raise ConfigError(f"gpus_per_node: expected an integer >= 0, got {self.gpus_per_node!r}")
        if self.max_failed is not None and (not isinstance(self.max_failed, int) or self.max_failed < 0):
            raise ConfigError(f"max_failed: expected an integer >= 0, got {self.max_failed!r}")
        if self.parallel > self.trials:
            raise ConfigError(f"parallel: {self.parallel} exceeds trials ({self.trials})")
        for name in ("data", "model", "out_root", "runtime"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name}: required")
            _check_shell_safe(name, value)


def _check_shell_safe(where: str, value: str) -> None:
    bad = [c for c in _SHELL_SPECIAL if c in value]
    if bad:
        raise ConfigError(f"{where}: {value!r} contains {bad[0]!r}, which the trial command cannot carry")


def katib_parameters(space: SearchSpace) -> dict[str, Any]:
    """Katib parameter specs of the searched options (``{name: V1beta1ParameterSpec}``).

    Raises:
        ConfigError: A parameter has no ``transferkit train`` flag or is a boolean choice.

    """
    from kubeflow.optimizer import Search
    from kubeflow_katib_api import models

    from transferkit.options import value_flags
    from transferkit.train import TrainConfig

    flags = value_flags(TrainConfig)
    specs: dict[str, Any] = {}
    for param in space.params:
        where = f"{space.source}: params.{param.name}"
        if param.name not in flags:
            raise ConfigError(f"{where}: has no `transferkit train` flag, so a Katib trial cannot set it")
        if param.kind == "categorical":
            if any(isinstance(c, bool) for c in param.choices):
                raise ConfigError(f"{where}: boolean choices cannot be passed as a train flag value")
            for choice in param.choices:
                _check_shell_safe(where, str(choice))
            specs[param.name] = Search.choice(list(param.choices))
        elif param.kind == "float" and param.step is None:
            make = Search.loguniform if param.log else Search.uniform
            specs[param.name] = make(param.low, param.high)
        else:  # int ranges and stepped float ranges: Search has no helper for them
            kind = "int" if param.kind == "int" else "double"
            fmt = (lambda v: str(int(v))) if kind == "int" else str
            distribution = "logUniform" if param.log else "uniform"
            specs[param.name] = models.V1beta1ParameterSpec(
                parameterType=kind, feasibleSpace=models.V1beta1FeasibleSpace(
                    min=fmt(param.low), max=fmt(param.high), step=None if param.step is None else fmt(param.step),
                    distribution=distribution))
    return specs


def trial_function_args(config: KatibConfig, space: SearchSpace) -> dict[str, Any]:
    """The fixed arguments of :func:`transferkit_trial` (the SDK adds one per searched parameter)."""
    from transferkit.options import value_flags
    from transferkit.train import TrainConfig, config_to_cli_args

    cli = config_to_cli_args(TrainConfig(data_dir=Path("DATA"), model=config.model, out_dir=Path("OUT"),
                                         metric=space.objective, **space.fixed))
    train_args: list[str] = []
    skip = False
    for i, arg in enumerate(cli):
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        train_args.append(config.data if i > 0 and cli[i - 1] == "--data" else arg)
    for arg in train_args:
        _check_shell_safe(f"{space.source}: fixed", arg)
    forgetting = None
    if space.retention:
        forgetting = ["--base", config.model]
        if config.forgetting_source:
            _check_shell_safe("forgetting_source", config.forgetting_source)
            forgetting += ["--source", config.forgetting_source]
    return {"train_args": train_args, "out_root": config.out_root,
            "flags": {p.name: value_flags(TrainConfig)[p.name] for p in space.params}, "forgetting_args": forgetting}


def _client(config: KatibConfig) -> Any:
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.optimizer import OptimizerClient
    from kubernetes.config import ConfigException

    # The kubernetes client reads $KUBECONFIG once, at import; read it now, as kubectl does.
    kubeconfig = config.kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        return OptimizerClient(KubernetesBackendConfig(namespace=config.namespace, config_file=kubeconfig))
    except ConfigException as exc:
        raise TuneError(f"kubeconfig {kubeconfig or '~/.kube/config'}: {exc}".splitlines()[0]) from None


def submit_experiment(config: KatibConfig) -> dict[str, Any]:
    """Create the Katib Experiment; return ``{"name", "namespace", "objective", "parameters"}``.

    Raises:
        ConfigError: Bad space or options.
        TuneError: The API server refused the Experiment or the runtime is missing.

    """
    from kubeflow.optimizer import Objective, RandomSearch, TrialConfig
    from kubeflow.optimizer.types.optimization_types import Direction
    from kubeflow.trainer import CustomTrainer, TrainJobTemplate

    from transferkit import images

    space = load_space(config.space)
    parameters = katib_parameters(space)
    resources: dict[str, Any] = {}
    if config.gpus_per_node:
        resources["gpu"] = config.gpus_per_node
    if config.cpu_per_node:
        resources["cpu"] = config.cpu_per_node
    if config.memory_per_node:
        resources["memory"] = config.memory_per_node
    image = config.image or (images.RUNTIME_CUDA_IMAGE if config.gpus_per_node else images.RUNTIME_IMAGE)
    trainer = CustomTrainer(func=transferkit_trial, func_args=trial_function_args(config, space), image=image,
                            num_nodes=config.nodes, resources_per_node=resources or None,
                            env=dict(config.env) or None)
    direction = Direction.MINIMIZE if space.objective == "loss" else Direction.MAXIMIZE
    objectives = [Objective(metric=space.objective, direction=direction)]
    if space.retention:
        objectives.append(Objective(metric="retention", direction=Direction.MAXIMIZE))
    client = _client(config)
    try:
        name = client.optimize(TrainJobTemplate(trainer=trainer, runtime=config.runtime),
                               trial_config=TrialConfig(num_trials=config.trials, parallel_trials=config.parallel,
                                                        max_failed_trials=config.max_failed),
                               search_space=parameters, objectives=objectives,
                               algorithm=RandomSearch(random_state=config.seed))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        # The SDK wraps the API error (multi-line, e.g. "(404)\nReason: Not Found..."): keep its first line.
        cause = str(exc.__cause__).strip().splitlines()[0].strip("() ") if exc.__cause__ else ""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"Katib Experiment not created: {message}" + (f" ({cause})" if cause else "")) from None
    namespace = client.backend.namespace
    logger.info("Created Katib Experiment %s/%s: %d trials (%d at a time) of %s, objective %s %s", namespace, name,
                config.trials, config.parallel, config.runtime, direction.value, space.objective)
    return {"name": name, "namespace": namespace, "objective": space.objective,
            "parameters": [p.name for p in space.params]}


def wait_for_experiment(config: KatibConfig, name: str, out_dir: Path, *, timeout_s: float = 86400.0,
                        poll_s: float = 10.0, delete_on_timeout: bool = True) -> dict[str, Any]:
    """Follow the Experiment to the end (logging every state change), then write ``best_config.json``.

    Raises:
        TuneError: The Experiment failed, timed out (then it is deleted unless ``delete_on_timeout`` is False),
            or finished without a best trial.

    """
    space = load_space(config.space)
    client = _client(config)
    seen: list[tuple[str, int]] = []

    def report(job: Any) -> None:
        state = (job.status, len(job.trials))
        if not seen or seen[-1] != state:
            seen.append(state)
            logger.info("Experiment %s: %s, %d trial(s) created", name, job.status, len(job.trials))

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job = client.get_job(name)
        except (RuntimeError, TimeoutError) as exc:
            raise TuneError(f"Katib Experiment {name}: cannot be read ({exc})") from None
        report(job)
        if job.status == "Failed":
            raise TuneError(f"Katib Experiment {name} failed ({_failure_reason(client, name)})")
        if job.status == "Complete":
            break
        if time.monotonic() > deadline:
            if delete_on_timeout:
                client.delete_job(name)
            raise TuneError(f"Katib Experiment {name} did not finish within {timeout_s:g} s"
                            + ("; deleted" if delete_on_timeout else ""))
        time.sleep(poll_s)
    best = client.get_best_results(name)
    if best is None:
        raise TuneError(f"Katib Experiment {name} completed without a best trial")
    return write_best_config(config, space, name, best.parameters, {m.name: float(m.latest) for m in best.metrics},
                             out_dir)


def _failure_reason(client: Any, name: str) -> str:
    try:
        events = client.get_job_events(name)
    except (RuntimeError, TimeoutError):  # events are a courtesy; the failure is reported regardless
        return "no events"
    return events[-1].message if events else "no events"


def write_best_config(config: KatibConfig, space: SearchSpace, name: str, parameters: dict[str, str],
                      metrics: dict[str, float], out_dir: Path) -> dict[str, Any]:
    """Write ``best_config.json`` (the format of the local search) from Katib's best trial.

    Raises:
        TuneError: The best trial lacks a parameter or the objective metric.

    """
    from transferkit.train import TrainConfig, config_to_cli_args

    options = dict(space.fixed)
    for param in space.params:
        if param.name not in parameters:
            raise TuneError(f"Katib Experiment {name}: best trial has no value for {param.name}")
        options[param.name] = _typed(param, parameters[param.name])
    if space.objective not in metrics:
        raise TuneError(f"Katib Experiment {name}: best trial reported no {space.objective} metric")
    cli = config_to_cli_args(TrainConfig(data_dir=Path("DATA"), model=config.model, out_dir=Path("OUT"),
                                         metric=space.objective, **options))
    train_args = [a for i, a in enumerate(cli) if a not in ("--data", "--out")
                  and (i == 0 or cli[i - 1] not in ("--data", "--out"))]
    payload = {"model": config.model, "objective": space.objective, "value": metrics[space.objective],
               "retention": metrics.get("retention"), "trial": None, "study": f"katib:{name}",
               "train_options": {"model": config.model, "metric": space.objective, **options},
               "train_args": train_args, "metrics": metrics}
    write_json(Path(out_dir) / "best_config.json", payload)
    return payload


def _typed(param: Any, raw: str) -> Any:
    if param.kind == "int":
        return int(float(raw))
    if param.kind == "float":
        return float(raw)
    for choice in param.choices:  # Katib returns categorical values as strings
        if str(choice) == raw:
            return choice
    raise TuneError(f"params.{param.name}: Katib returned {raw!r}, not one of the choices")
