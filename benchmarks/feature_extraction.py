"""Feature extraction: cached-feature head training vs the naive frozen-base Trainer loop.

Both runs use ``run_training`` with ``strategy=feature_extraction`` on the same prepared movie-sentiment
data, seed and settings; the only difference is ``feature_cache`` (``--no-feature-cache`` runs every
batch through the frozen MiniLM in each epoch). Per-epoch wall time comes from the run's
``training_summary.json`` (``epoch_seconds``: end of one epoch to the end of the next, including the
evaluation in between). ``speedup`` = naive mean epoch time / cached mean epoch time over the epochs
after the first (goal >= 10); ``accuracy_delta_pt`` = cached minus naive test accuracy in points (goal:
|delta| <= 0.5). The one-off feature computation is reported separately. The feature cache used here is
deleted afterwards so every run of the benchmark measures a cold cache. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_quality import evaluate_test_accuracy, prepared_movie_data


def subset(data: Path, out: Path, train_rows: int, seed: int, validation_rows: int | None = None) -> Path:
    """A copy of the prepared data whose train (and optionally validation) split is a seeded sample."""
    import numpy as np

    out.mkdir(parents=True)
    for file in data.iterdir():
        if file.is_file():
            shutil.copy(file, out / file.name)
    for split, count in (("train", train_rows), ("validation", validation_rows)):
        table = pq.read_table(data / f"{split}.parquet")
        if count is not None and count < table.num_rows:
            rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=count, replace=False))
            pq.write_table(table.take(rows), out / f"{split}.parquet")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=4000, help="Training examples (seeded sample).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from transferkit.train import TrainConfig, run_training

    work = Path(tempfile.mkdtemp(prefix="fe-bench-"))
    try:
        data = subset(prepared_movie_data(args.seed), work / "data", args.train_rows, args.seed)
        runs = {}
        for cached in (True, False):
            out = work / ("cached" if cached else "naive")
            started = time.perf_counter()
            result = run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="feature_extraction",
                                              out_dir=out, epochs=args.epochs, seed=args.seed, feature_cache=cached))
            wall = time.perf_counter() - started
            summary = json.loads((out / "training_summary.json").read_text())
            runs[cached] = {
                "wall": wall,
                "epochs": summary["epoch_seconds"],
                "test_accuracy": evaluate_test_accuracy(out, data),
                "validation_accuracy": result.validation_metrics["accuracy"],
                "feature_cache": result.feature_cache,
            }
            if cached and result.feature_cache and result.feature_cache.get("cache_dir"):
                shutil.rmtree(result.feature_cache["cache_dir"], ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def after_first(epochs: list[float]) -> float:
        rest = epochs[1:] or epochs
        return sum(rest) / len(rest)

    cached, naive = runs[True], runs[False]
    speedup = after_first(naive["epochs"]) / after_first(cached["epochs"])
    delta = 100 * (cached["test_accuracy"] - naive["test_accuracy"])
    print(f"\ntrain rows {args.train_rows}, epochs {args.epochs}, seed {args.seed}")
    print(f"{'path':<8} {'epoch s (each)':<34} {'mean after 1st':>14} {'wall s':>8} {'test acc':>9} {'val acc':>8}")
    for name, run in (("cached", cached), ("naive", naive)):
        each = ", ".join(f"{s:.2f}" for s in run["epochs"])
        print(f"{name:<8} {each:<34} {after_first(run['epochs']):>14.3f} {run['wall']:>8.1f} "
              f"{run['test_accuracy']:>9.4f} {run['validation_accuracy']:>8.4f}")
    print(f"feature computation (one-off, cache {'hit' if cached['feature_cache'].get('cache_hit') else 'miss'}): "
          f"{cached['feature_cache'].get('seconds', 0.0):.1f} s")
    from transferkit.hardware import benchmark_host

    print(json.dumps({
        **benchmark_host(),
        "speedup": round(speedup, 2),
        "accuracy_delta_pt": round(delta, 3),
        "cached_test_accuracy": round(cached["test_accuracy"], 4),
        "naive_test_accuracy": round(naive["test_accuracy"], 4),
        "cached_epoch_s": round(after_first(cached["epochs"]), 4),
        "naive_epoch_s": round(after_first(naive["epochs"]), 3),
        "feature_computation_s": round(cached["feature_cache"].get("seconds", 0.0), 2),
        "total_speedup": round(naive["wall"] / cached["wall"], 2),
    }))


if __name__ == "__main__":
    main()
