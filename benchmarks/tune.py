"""Hyperparameter search: a 12-trial Optuna search (`transferkit tune`) vs the catalog defaults.

MiniLM-L6 on movie sentiment, both evaluated on the full test split (1,057 rows). Two schedules:

- ``--strategy feature_extraction`` (default, what the README figures come from): the frozen base with the
  head trained on cached features, on the FULL prepared training split (8,454 rows) and validation split
  (1,057 rows); an evaluation every 50 steps (what the pruner sees). Default = the catalog's frozen-base recipe
  (head lr 1e-3, 10 epochs, batch 32, warmup 0.06, weight decay 0.01, linear); the search explores head learning
  rate, epochs, batch size, weight decay, warmup and scheduler; no trial is pruned before 500 steps.
- ``--strategy full``: a full fine-tune, short schedule (1 epoch on a seeded 800-row sample of the training split
  and a 256-row validation sample, max_length 64, an evaluation every 5 steps); the search explores learning
  rate, LLRD, L2-SP and warmup; no pruning before step 20 of 25 (earlier, the warmup phase decides). On a
  shared 2-core machine one run takes minutes, 13 runs too long for a routine benchmark.

An untimed warm-up run fills the feature cache first; then the default run and the search run in this process
one after the other; the best trial's model is evaluated on test as it was trained (no retraining). The search's
first trial is the default configuration (``enqueue_defaults``); TPE explores from there, with the median pruner.
``time_ratio`` = search wall time / (12 x the wall time of the default run), the cost of the search against twelve
untuned trials (each default-sized). Goal: the tuned config beats the default on validation, is within noise or
better on test, and ``time_ratio`` <= 1.6. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_extraction import subset
from transfer_quality import prepared_movie_data

# No pruning before this many optimizer steps: the first evaluations mostly measure warmup and batch size.
PRUNE_WARMUP_STEPS = {"feature_extraction": 500, "full": 20}
SPACES = {
    "feature_extraction": """
objective: accuracy
fixed:
  strategy: feature_extraction
  max_length: 64
  eval_steps: 50
  seed: {seed}
params:
  head_learning_rate: {{low: 1.0e-4, high: 3.0e-2, log: true}}
  epochs: {{low: 2, high: 12, step: 1}}
  batch_size: {{choices: [16, 32, 64]}}
  weight_decay: {{choices: [0.0, 0.01, 0.1]}}
  warmup_ratio: {{choices: [0.0, 0.06, 0.2]}}
  scheduler: {{choices: [linear, cosine, constant]}}
""",
    "full": """
objective: accuracy
fixed:
  strategy: full
  epochs: 1
  max_length: 64
  batch_size: 32
  eval_steps: 5
  seed: {seed}
params:
  learning_rate: {{low: 1.0e-5, high: 3.0e-4, log: true}}
  llrd: {{low: 0.5, high: 1.0}}
  l2sp: {{choices: [0.0, 0.001, 0.01, 0.1]}}
  warmup_ratio: {{choices: [0.0, 0.06, 0.2]}}
""",
}


def test_accuracy(model_dir: Path, data: Path, out: Path) -> float:
    from transferkit.evaluate.evaluation import EvaluateConfig, evaluate_model

    result = evaluate_model(EvaluateConfig(model_dir=model_dir, data_dir=data, out_dir=out, max_length=64,
                                           batch_size=64, progress=False))
    return float(result.scalars["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--strategy", choices=sorted(SPACES), default="feature_extraction")
    parser.add_argument("--train-rows", type=int, default=None, help="default: all (feature_extraction), 800 (full)")
    parser.add_argument("--validation-rows", type=int, default=None, help="default: all / 256")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transferkit.hardware import benchmark_host
    from transferkit.log import configure_logging
    from transferkit.train import TrainConfig, run_training
    from transferkit.tune import TuneConfig, run_search
    from transferkit.tune.space import parse_space

    configure_logging(False)
    if args.strategy == "full":
        args.train_rows = args.train_rows or 800
        args.validation_rows = args.validation_rows or 256
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = Path(tmp)
        data = subset(prepared_movie_data(), work / "data", args.train_rows, seed=args.seed,
                      validation_rows=args.validation_rows)
        space_file = work / "space.yaml"
        space_file.write_text(SPACES[args.strategy].format(seed=args.seed))
        fixed = parse_space(__import__("yaml").safe_load(space_file.read_text())).fixed

        # An untimed first run fills the frozen-base feature cache, so the timed default run starts warm as the
        # trials do (the cold feature pass is a one-off cost shared by every run on this data).
        run_training(TrainConfig(data_dir=data, model="minilm-l6", out_dir=work / "warm-up", **fixed))
        started = time.perf_counter()
        default = run_training(TrainConfig(data_dir=data, model="minilm-l6", out_dir=work / "default", **fixed))
        default_seconds = time.perf_counter() - started
        default_test = test_accuracy(work / "default", data, work / "eval-default")

        tuned = run_search(TuneConfig(data_dir=data, model="minilm-l6", space=space_file, out_dir=work / "search",
                                      trials=args.trials, seed=args.seed, startup_trials=3,
                                      prune_warmup_steps=PRUNE_WARMUP_STEPS[args.strategy]))
        assert tuned.best_model_dir is not None
        tuned_test = test_accuracy(tuned.best_model_dir, data, work / "eval-tuned")

    completed = [t for t in tuned.trials if t["state"] == "complete"]
    result = {
        "default_accuracy": round(default_test, 4),
        "tuned_accuracy": round(tuned_test, 4),
        "default_validation_accuracy": round(default.best_metric_value, 4),
        "tuned_validation_accuracy": round(tuned.best["value"], 4),
        "trials": tuned.finished,
        "pruned_trials": tuned.pruned,
        "completed_trials": len(completed),
        "time_ratio": round(tuned.wall_seconds / (args.trials * default_seconds), 3),
        "search_seconds": round(tuned.wall_seconds, 1),
        "default_run_seconds": round(default_seconds, 1),
        "best_params": tuned.best["params"],
        "strategy": args.strategy,
        "train_rows": args.train_rows or "all",
        "validation_rows": args.validation_rows or "all",
        **benchmark_host(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
