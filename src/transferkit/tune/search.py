"""Local hyperparameter search with Optuna: ``run_search(TuneConfig) -> TuneResult``.

Each trial is one ``run_training`` call (the fine-tune step as a library call) with options drawn from the
search space, optionally followed by the forgetting check (multi-objective: validation metric and source-task
retention). The study lives in an SQLite file in the output directory, so a killed search started again
continues: finished trials are kept, the trial that was running is marked failed and retried with the same
options. Trials are pruned from their validation curves (a Trainer callback reports every evaluation to the
trial; Optuna's pruner decides). ``jobs > 1`` runs that many worker processes on the same study.

Outputs in ``out_dir``: ``study.db``, ``trials/<number>/`` (the best trial's model is kept), ``best_config.json``
(the options ``transferkit train`` / the pipeline take) and ``tune_summary.json`` (every trial, the Pareto front).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, TransferkitError, TuneError
from transferkit.io import write_json
from transferkit.tune.space import SearchSpace, load_space

logger = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
STUDY_FILE = "study.db"
BEST_FILE = "best_config.json"
SUMMARY_FILE = "tune_summary.json"
TRIALS_DIR = "trials"
_LOCK_FILE = ".tune.lock"


@dataclass
class TuneConfig:
    """Configuration of :func:`run_search`; validated on construction (``ConfigError`` names the field).

    Attributes:
        data_dir: Prepared dataset directory.
        model: Base model (catalog name or directory).
        space: The ``space.yaml`` file (see :mod:`transferkit.tune.space`).
        out_dir: Search directory: study file, trial outputs, best configuration, summary. Started again with
            the same directory, the search resumes.
        trials: Trials to finish (completed or pruned), counting those of earlier runs of the same study.
        jobs: Trials run in parallel (one worker process each, sharing the study file).
        pruner: ``median`` (stop a trial whose metric is below the median of earlier trials at the same step),
            ``hyperband`` or ``none``. Multi-objective searches cannot prune (Optuna reports one value).
        seed: Seed of the sampler (TPE for one objective, NSGA-II for two).
        min_retention: Multi-objective: the best configuration is the best metric on the Pareto front among
            trials keeping at least this source-task retention (as ``--preserve-source`` does).
        forgetting_source: Source set of the forgetting check (None: the base model's default).
        startup_trials: Trials run before the pruner and the TPE model start deciding.
        prune_warmup_steps: Optimizer steps a trial runs before it can be pruned (early evaluations are noisy:
            warmup and batch size dominate them).
        enqueue_defaults: The first trial of a new study runs the untuned configuration (the model's catalog
            defaults for the searched options) when it lies inside the space, so the search starts from it.
        keep_trial_models: Keep every trial's model directory (default: only the best trial's).
        study_name: Name of the study in the study file.

    """

    data_dir: Path
    model: str
    space: Path
    out_dir: Path
    trials: int = 12
    jobs: int = 1
    pruner: str = "median"
    seed: int = 0
    min_retention: float | None = None
    forgetting_source: str | None = None
    startup_trials: int = 3
    prune_warmup_steps: int = 0
    enqueue_defaults: bool = True
    keep_trial_models: bool = False
    study_name: str = "transferkit"

    def __post_init__(self) -> None:
        self.data_dir, self.space, self.out_dir = Path(self.data_dir), Path(self.space), Path(self.out_dir)
        for name in ("trials", "jobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("startup_trials", "prune_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: expected an integer >= 0, got {value!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner: unknown value {self.pruner!r}; expected one of {', '.join(PRUNERS)}")
        if self.min_retention is not None and not 0 <= self.min_retention <= 1.5:
            raise ConfigError(f"min_retention: expected a ratio in [0, 1.5], got {self.min_retention!r}")
        if not str(self.model).strip():
            raise ConfigError("model: a catalog name or model directory is required")
        if not self.study_name.strip():
            raise ConfigError("study_name: must not be empty")
        out, data = self.out_dir.absolute(), self.data_dir.absolute()
        if out == data or data in out.parents:
            raise ConfigError(f"out_dir: {out} must not be inside the dataset directory {data}")

    @property
    def storage_url(self) -> str:
        """SQLAlchemy URL of the study file."""
        return f"sqlite:///{(self.out_dir / STUDY_FILE).absolute()}"


@dataclass
class TuneResult:
    """What a search produced.

    Attributes:
        best: The selected trial: ``number``, ``params``, ``train_options``, ``value``, ``retention``.
        trials: Every trial: ``number``, ``state``, ``params``, ``values``, ``retention``, ``pruned_at_step``,
            ``seconds``.
        pareto_front: Multi-objective: trial numbers on the Pareto front (empty otherwise).
        finished: Completed plus pruned trials in the study.
        pruned: Pruned trials in the study.
        ran_now: Trials this invocation started (a resumed search runs only the missing ones).
        wall_seconds: Wall time of this invocation.
        best_config_path: ``best_config.json``.
        summary_path: ``tune_summary.json``.
        best_model_dir: The best trial's model directory, when kept.

    """

    best: dict[str, Any]
    trials: list[dict[str, Any]]
    pareto_front: list[int]
    finished: int
    pruned: int
    ran_now: int
    wall_seconds: float
    best_config_path: Path
    summary_path: Path
    best_model_dir: Path | None = None
    objective: str = "accuracy"
    retention_objective: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        data = asdict(self)
        for key in ("best_config_path", "summary_path", "best_model_dir"):
            data[key] = None if data[key] is None else str(data[key])
        return data


# ----------------------------------------------------------------------------------------------- trials


def _optuna() -> Any:
    import optuna

    # Optuna logs through its own handler by default; route it through ours (no duplicate lines on stderr).
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return optuna


def make_pruning_callback(trial: Any, metric: str) -> Any:
    """A Trainer callback reporting ``eval_<metric>`` to ``trial`` at every evaluation and pruning on request.

    Written here because optuna-integration has no Hugging Face Trainer callback; raising ``TrialPruned`` from
    ``on_evaluate`` ends the Trainer loop at once, before the trial writes any model.
    """
    import optuna
    from transformers import TrainerCallback

    class OptunaPruningCallback(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None or not state.is_world_process_zero:
                return
            trial.report(float(value), state.global_step)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_step", state.global_step)
                raise optuna.TrialPruned(f"trial {trial.number} pruned at step {state.global_step} "
                                         f"({metric} {value:.4f})")

    return OptunaPruningCallback()


class _Objective:
    """One trial: train with the suggested options, measure, optionally check forgetting."""

    def __init__(self, config: TuneConfig, space: SearchSpace) -> None:
        self.config, self.space = config, space

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        from transferkit.train import TrainConfig, run_training

        config, space = self.config, self.space
        options = space.suggest(trial)
        trial_dir = (config.out_dir / TRIALS_DIR / f"{trial.number:04d}").absolute()
        trial.set_user_attr("train_options", _jsonable(options))
        trial.set_user_attr("pid", os.getpid())
        train_config = TrainConfig(data_dir=config.data_dir, model=config.model, out_dir=trial_dir / "model",
                                   checkpoint_dir=trial_dir / "checkpoints", resume=False, keep_checkpoints=False,
                                   metric=space.objective, **options)
        prune = config.pruner != "none" and not space.retention
        callbacks = [make_pruning_callback(trial, space.objective)] if prune else []
        logger.info("Trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in trial.params.items()))
        try:
            result = run_training(train_config, callbacks)
        except BaseException:
            shutil.rmtree(trial_dir, ignore_errors=True)
            raise
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
        value = float(result.best_metric_value)
        trial.set_user_attr("validation_metrics", result.validation_metrics)
        trial.set_user_attr("train_seconds", result.wall_time_s)
        if not space.retention:
            return value
        retention = self._retention(trial_dir)
        trial.set_user_attr("retention", retention)
        return value, retention

    def _retention(self, trial_dir: Path) -> float:
        from transferkit.evaluate.forgetting import ForgettingConfig, check_forgetting

        result = check_forgetting(ForgettingConfig(base=self.config.model, model=trial_dir / "model",
                                                   out_dir=trial_dir / "forgetting",
                                                   source=self.config.forgetting_source, progress=False))
        return float(result.retention)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


# ----------------------------------------------------------------------------------------------- study


def _sampler(optuna: Any, space: SearchSpace, config: TuneConfig) -> Any:
    if space.retention:
        return optuna.samplers.NSGAIISampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=max(config.startup_trials, 1))


def _pruner(optuna: Any, config: TuneConfig) -> Any:
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials,
                                           n_warmup_steps=config.prune_warmup_steps)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, config.prune_warmup_steps))
    return optuna.pruners.NopPruner()


def open_study(config: TuneConfig, space: SearchSpace) -> Any:
    """Create or load the study in ``out_dir/study.db``.

    Raises:
        TuneError: The file holds a study with other objectives (another search space).

    """
    optuna = _optuna()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=config.storage_url, study_name=config.study_name,
                                directions=space.directions, sampler=_sampler(optuna, space, config),
                                pruner=_pruner(optuna, config), load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    if stored != space.directions:
        raise TuneError(f"{config.out_dir / STUDY_FILE}: study {config.study_name!r} optimises {stored}, the search "
                        f"space {space.directions}; use another --out or --study-name")
    return study


def _retry_interrupted(study: Any) -> int:
    """Mark trials left RUNNING by a killed search as failed and queue their options again.

    Only called while holding the search lock, so a RUNNING trial belongs to no live process. Optuna's own
    heartbeat mechanism would also fail them, but only after a grace period and when a later trial starts.
    """
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params:  # killed before its options were drawn: nothing to repeat
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        logger.warning("Trial %d was interrupted; it runs again with the same options", trial.number)
    return len(stale)


def default_params(config: TuneConfig, space: SearchSpace) -> dict[str, Any] | None:
    """The untuned value of every searched option (catalog defaults, else TrainConfig's).

    Returns:
        ``{option: value}``, or None when one of the values lies outside the space.

    """
    import dataclasses

    from transferkit.models.catalog import resolve_model
    from transferkit.train import TrainConfig
    from transferkit.train.side import resolve_hyperparameters

    train_config = TrainConfig(data_dir=config.data_dir, model=config.model, out_dir=config.out_dir / "unused",
                               **space.fixed)
    entry = resolve_model(config.model).entry
    resolved = resolve_hyperparameters(train_config, entry, model_limit=1 << 30)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.init}
    params: dict[str, Any] = {}
    for param in space.params:
        value = resolved.get(param.name, fields.get(param.name))
        if param.kind == "categorical":
            if value not in param.choices:
                return None
        elif value is None or not param.low <= value <= param.high or (
                param.step and abs(round((value - param.low) / param.step) * param.step + param.low - value) > 1e-9):
            return None
        params[param.name] = int(value) if param.kind == "int" else value
    return params


def _enqueue_defaults(study: Any, config: TuneConfig, space: SearchSpace) -> None:
    params = default_params(config, space)
    if params is None:
        logger.info("The untuned configuration lies outside the search space; not run as a trial")
        return
    study.enqueue_trial(params, user_attrs={"defaults": True})
    logger.info("Trial 0 runs the untuned configuration: %s", ", ".join(f"{k}={v}" for k, v in params.items()))


@contextlib.contextmanager
def _search_lock(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / _LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuneError(f"{out_dir}: another search is running on this directory") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _finished(study: Any) -> tuple[int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return len(trials), sum(t.state == TrialState.PRUNED for t in trials)


def _optimize(config: TuneConfig, space: SearchSpace, budget: int, threads: int | None) -> None:
    """Run trials until the study has ``config.trials`` finished ones (or ``budget`` attempts were made)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    if threads:
        import torch

        torch.set_num_threads(threads)
    study = open_study(config, space)
    stop = MaxTrialsCallback(config.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    # A trial failing on its options (OOM, a combination TrainConfig refuses) is recorded as failed; the search
    # goes on. Anything else (a bug, Ctrl-C) stops it.
    study.optimize(_Objective(config, space), n_trials=budget, callbacks=[stop], catch=(TransferkitError,),
                   gc_after_trial=True)


def _worker(config: TuneConfig, budget: int, threads: int) -> None:
    from transferkit.log import configure_logging

    configure_logging(False)
    _optimize(config, load_space(config.space), budget, threads)


def run_search(config: TuneConfig) -> TuneResult:
    """Run (or resume) the search, then write ``best_config.json`` and ``tune_summary.json``.

    Raises:
        ConfigError: Invalid search space or options.
        TuneError: Another search holds the directory, the study file belongs to another space, or no trial
            finished / none meets ``min_retention``.

    """
    space = load_space(config.space)
    if config.min_retention is not None and not space.retention:
        raise ConfigError("min_retention: needs `retention: true` in the search space (a second objective)")
    started = time.perf_counter()
    with _search_lock(config.out_dir):
        study = open_study(config, space)
        attempts_before = len(study.trials)
        if attempts_before == 0 and config.enqueue_defaults:
            _enqueue_defaults(study, config, space)
        _retry_interrupted(study)  # a queued retry is created now and counts as run now
        done_before, _ = _finished(study)
        missing = config.trials - done_before
        if missing > 0:
            logger.info("Study %s: %d of %d trials finished; running %d more (%d at a time)", config.study_name,
                        done_before, config.trials, missing, config.jobs)
            # Failed trials do not count as finished: allow some retries, but never loop forever.
            budget = missing + max(2, missing // 2)
            if config.jobs == 1:
                _optimize(config, space, budget, threads=None)
            else:
                threads = max(1, (os.cpu_count() or 1) // config.jobs)
                # spawn, not fork: the parent may already hold torch thread pools and open SQLite handles.
                with ProcessPoolExecutor(config.jobs, mp_context=get_context("spawn")) as pool:
                    futures = [pool.submit(_worker, config, budget, threads) for _ in range(config.jobs)]
                    for future in futures:
                        future.result()
        else:
            logger.info("Study %s already has %d finished trials", config.study_name, done_before)
        study = open_study(config, space)
        ran_now = len(study.trials) - attempts_before
        result = _summarise(config, space, study, ran_now, time.perf_counter() - started)
    return result


# ----------------------------------------------------------------------------------------------- results


def _trial_record(trial: Any) -> dict[str, Any]:
    seconds = None
    if trial.datetime_start and trial.datetime_complete:
        seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)
    return {
        "number": trial.number, "state": trial.state.name.lower(), "params": trial.params,
        "values": trial.values, "retention": trial.user_attrs.get("retention"),
        "pruned_at_step": trial.user_attrs.get("pruned_at_step"), "seconds": seconds,
        "retry_of": trial.user_attrs.get("retry_of"), "pid": trial.user_attrs.get("pid"),
        "defaults": bool(trial.user_attrs.get("defaults", False)),
    }


def select_trial(space: SearchSpace, study: Any, min_retention: float | None) -> tuple[Any, list[int]]:
    """The chosen trial and the Pareto front (multi-objective; empty for one objective).

    One objective: the study's best trial. Two: on the Pareto front, the best metric among trials keeping
    ``min_retention`` (all of the front when None).

    Raises:
        TuneError: No trial finished, or none on the front keeps ``min_retention``.

    """
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuneError(f"study {study.study_name!r}: no trial completed (see the log for failed/pruned trials)")
    if not space.retention:
        return study.best_trial, []
    front = sorted(study.best_trials, key=lambda t: t.number)
    sign = -1.0 if space.objective == "loss" else 1.0
    eligible = [t for t in front if min_retention is None or t.values[1] >= min_retention]
    if not eligible:
        best = max(t.values[1] for t in front)
        raise TuneError(f"no trial on the Pareto front keeps retention >= {min_retention:g} (best retention "
                        f"{best:.3f}); lower --min-retention or search stronger preservation (l2sp, llrd)")
    return max(eligible, key=lambda t: (sign * t.values[0], t.values[1])), [t.number for t in front]


def _summarise(config: TuneConfig, space: SearchSpace, study: Any, ran_now: int, wall: float) -> TuneResult:
    from transferkit.train import TrainConfig, config_to_cli_args

    chosen, front = select_trial(space, study, config.min_retention)
    finished, pruned = _finished(study)
    options = dict(chosen.user_attrs.get("train_options") or space.suggest(chosen))
    cli = config_to_cli_args(TrainConfig(data_dir=Path("DATA"), model=config.model, out_dir=Path("OUT"),
                                         metric=space.objective, **options))
    train_args = [a for i, a in enumerate(cli) if a not in ("--data", "--out")
                  and (i == 0 or cli[i - 1] not in ("--data", "--out"))]
    best = {"number": chosen.number, "params": chosen.params, "train_options": options,
            "value": chosen.values[0], "retention": chosen.values[1] if space.retention else None,
            "validation_metrics": chosen.user_attrs.get("validation_metrics")}
    keep = {chosen.number} | set(front)
    best_model = (config.out_dir / TRIALS_DIR / f"{chosen.number:04d}" / "model").absolute()
    if not config.keep_trial_models:
        for directory in sorted((config.out_dir / TRIALS_DIR).glob("[0-9]*")):
            if directory.is_dir() and int(directory.name) not in keep:
                shutil.rmtree(directory, ignore_errors=True)
    best_path = write_json(config.out_dir / BEST_FILE, {
        "model": config.model, "objective": space.objective, "value": best["value"],
        "retention": best["retention"], "trial": chosen.number, "study": config.study_name,
        "train_options": {"model": config.model, "metric": space.objective, **options},
        "train_args": train_args,
    })
    trials = [_trial_record(t) for t in study.trials]
    result = TuneResult(best=best, trials=trials, pareto_front=front, finished=finished, pruned=pruned,
                        ran_now=ran_now, wall_seconds=round(wall, 2), best_config_path=best_path,
                        summary_path=config.out_dir / SUMMARY_FILE,
                        best_model_dir=best_model if best_model.is_dir() else None, objective=space.objective,
                        retention_objective=space.retention)
    write_json(result.summary_path, result.to_dict())
    values = [t["values"][0] for t in trials if t["state"] == "complete"]
    logger.info("Best trial %d: %s %.4f (%d finished, %d pruned; median of completed %.4f)", chosen.number,
                space.objective, best["value"], finished, pruned,
                sorted(values)[len(values) // 2] if values else math.nan)
    return result


def load_best_config(path: str | Path) -> dict[str, Any]:
    """Read the train options of a ``best_config.json`` (for ``train``/the pipeline).

    Raises:
        ConfigError: The file is missing, not JSON, or has no ``train_options`` mapping.

    """
    import json

    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the best configuration ({exc})") from None
    options = payload.get("train_options") if isinstance(payload, dict) else None
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: train_options: expected a mapping of train options")
    return options
