"""`transferkit tune` with the real MiniLM on a small slice of real movie reviews (frozen base + head trials).

A search killed with SIGKILL resumes its SQLite study: finished trials are kept, the interrupted one runs again
with the same options; the resumed half runs on two worker processes (--jobs 2).
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from tests.helpers import write_movie_slice
from transferkit.train import TrainConfig, run_training
from transferkit.tune import TuneConfig, load_best_config, run_search
from transferkit.tune.search import make_pruning_callback

pytestmark = pytest.mark.integration

SPACE = """
fixed:
  strategy: feature_extraction
  max_length: 32
  batch_size: 16
  eval_steps: 2
params:
  head_learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
  epochs: {low: 1, high: 2, step: 1}
"""
PARAMS = 2  # searched options in SPACE


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_movie_slice(tmp_path_factory.mktemp("tune") / "data", train=64, validation=32, test=8)


def _states(db):
    try:
        with sqlite3.connect(db) as conn:
            states = dict(conn.execute("SELECT number, state FROM trials").fetchall())
            # A trial counts as running once all its options are drawn (it is created a moment before, and they
            # are drawn one by one: a kill in between would retry a partial set, the rest drawn anew).
            drawn = {n for (n,) in conn.execute(
                "SELECT t.number FROM trials t JOIN trial_params p ON p.trial_id = t.trial_id "
                "GROUP BY t.number HAVING COUNT(p.param_id) = ?", (PARAMS,))}
            return {n: s if s != "RUNNING" or n in drawn else "CREATED" for n, s in states.items()}
    except sqlite3.OperationalError:  # the study file is being created
        return {}


def test_the_pruning_callback_stops_a_real_run_before_anything_is_written(data, tmp_path):
    # A pruner no accuracy can pass: the first evaluation must end the run through the callback.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    trial = study.ask()
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="feature_extraction", out_dir=tmp_path / "m",
                         max_length=32, batch_size=16, max_steps=4, eval_steps=1, head_learning_rate=1e-2)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at step 1 \(accuracy 0\.\d+\)"):
        run_training(config, [make_pruning_callback(trial, "accuracy")])
    assert not (tmp_path / "m").exists()
    frozen = study.trials[trial.number]
    assert list(frozen.intermediate_values) == [1] and frozen.user_attrs["pruned_at_step"] == 1


def test_a_killed_search_resumes_without_repeating_finished_trials(data, tmp_path):
    space, out = tmp_path / "space.yaml", tmp_path / "search"
    space.write_text(SPACE)
    cmd = [sys.executable, "-m", "transferkit.cli.main", "tune", "--data", str(data), "--model", "minilm-l6",
           "--space", str(space), "--out", str(out), "--trials", "4", "--pruner", "none", "--seed", "1"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    states = {}
    while not (list(states.values()).count("COMPLETE") == 2 and states.get(2) == "RUNNING"):
        assert process.poll() is None, f"search ended before the kill: {states}"
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
        states = _states(out / "study.db") if (out / "study.db").exists() else {}
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "best_config.json").exists()
    before = optuna.load_study(study_name="transferkit", storage=f"sqlite:///{out / 'study.db'}").trials
    interrupted = before[2].params

    config = TuneConfig(data_dir=data, model="minilm-l6", space=space, out_dir=out, trials=4, jobs=2, pruner="none",
                        seed=1)
    result = run_search(config)

    trials = {t["number"]: t for t in result.trials}
    # Finished trials are kept as they were, the interrupted one failed and ran again with its options.
    for old in before[:2]:
        assert trials[old.number]["state"] == "complete" and trials[old.number]["params"] == old.params
        assert trials[old.number]["values"] == old.values
    assert trials[2]["state"] == "fail"
    retry = [t for t in result.trials if t["retry_of"] == 2]
    assert len(retry) == 1 and retry[0]["params"] == interrupted and retry[0]["state"] == "complete"
    new = [t for t in result.trials if t["number"] > 2]
    assert result.ran_now == len(new) >= 2 and result.finished >= 4
    # Only the missing trials ran, on the two worker processes.
    assert len({t["pid"] for t in new}) == 2 and os.getpid() not in {t["pid"] for t in new}

    # The best trial is the best completed one; its config is what `train` takes and the model is kept.
    completed = [t for t in result.trials if t["state"] == "complete"]
    assert result.best["value"] == max(t["values"][0] for t in completed)
    options = load_best_config(result.best_config_path)
    rebuilt = TrainConfig(data_dir=data, out_dir=tmp_path / "final", **options)
    assert rebuilt.head_learning_rate == result.best["params"]["head_learning_rate"]
    best = json.loads(result.best_config_path.read_text())
    assert best["train_args"][:4] == ["--model", "minilm-l6", "--strategy", "feature_extraction"]
    assert (result.best_model_dir / "model.safetensors").is_file()
    kept = sorted(p.name for p in (out / "trials").iterdir())
    assert kept == [f"{result.best['number']:04d}"]

    # Started again with the same budget: nothing runs.
    assert run_search(config).ran_now == 0


def test_multi_objective_search_reports_the_pareto_front_with_retention(data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("fixed:", "retention: true\nfixed:"))
    result = run_search(TuneConfig(data_dir=data, model="minilm-l6", space=space, out_dir=tmp_path / "mo", trials=2,
                                   min_retention=0.0))
    completed = [t for t in result.trials if t["state"] == "complete"]
    assert len(completed) == 2 and result.pruned == 0
    for trial in completed:
        assert trial["values"][1] == trial["retention"] and 0 < trial["retention"] < 1.5
    assert result.pareto_front and result.best["number"] in result.pareto_front
    assert json.loads(result.best_config_path.read_text())["retention"] == result.best["retention"]


def test_the_pipeline_tune_step_feeds_its_best_options_to_fine_tune(data, tmp_path):
    from transferkit.train.step import config_from_parameters
    from transferkit.tune.step import tune_step

    result = tune_step(data, tmp_path / "step", base_model="minilm-l6", space=SPACE, trials=2, seed=0)
    options = result["train_options"]
    assert set(options) >= {"head_learning_rate", "epochs", "max_length"} and "strategy" not in options
    assert (tmp_path / "step" / "best_config.json").is_file() and result["objective"] == "accuracy"
    params = {"base_model": "minilm-l6", "strategy": "feature_extraction", "head_learning_rate": 0.0,
              "tuned_options": json.dumps(options)}
    config = config_from_parameters(data, tmp_path / "m", params)
    assert config.head_learning_rate == options["head_learning_rate"] and config.max_length == 32
