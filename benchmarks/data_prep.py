"""Data-prep scaling benchmark: 100k vs 1M-row CSVs, each prepared in its own subprocess.

Generates synthetic labelled CSVs (cached under ``$TRANSFERKIT_CACHE/bench/data_prep``, never committed),
runs ``prepare_dataset`` on each in a fresh interpreter and reads that child's peak RSS from
``os.wait4``. Prints rows/s, peak RSS and the 1M/100k time ratio; the last stdout line is one JSON
object with ``rows_per_s``, ``peak_rss_mb_1m`` and ``time_ratio_1m_100k`` (goal: RSS <= 1.5 GB,
ratio <= 11: linear scaling plus fixed costs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from transferkit.assets import cache_dir

SIZES = (100_000, 1_000_000)
GENERATOR_VERSION = 1
CLASSES = ("business", "science", "sports", "world")
CLASS_SHARE = (0.4, 0.3, 0.2, 0.1)
CHUNK = 100_000

CHILD = """
import json, sys, time
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
started = time.perf_counter()
result = prepare_dataset(DataPrepConfig(dataset=sys.argv[1], out=sys.argv[2], seed=7))
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "rows": result.rows, "duplicates_removed": result.duplicates_removed,
                  "token_p95": result.token_length["p95"], "truncation_rate": result.truncation_rate}))
"""


def _vocabulary(rng: np.random.Generator, size: int = 6000) -> np.ndarray:
    syllables = np.array(["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "de", "va", "qu", "ix", "or", "en", "al"])
    lengths = rng.integers(1, 4, size=size)
    return np.array(["".join(rng.choice(syllables, n)) for n in lengths])


def generate_csv(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``rows`` synthetic texts (5-40 words, class-specific topic words, ~0.5% duplicates)."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    topics = rng.choice(len(vocab), size=(len(CLASSES), 40), replace=False)
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("label", pa.string())])
    with pacsv.CSVWriter(str(tmp), schema) as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            labels = rng.choice(len(CLASSES), size=n, p=CLASS_SHARE)
            lengths = rng.integers(5, 41, size=n)
            words = rng.integers(0, len(vocab), size=int(lengths.sum()))
            topical = rng.random(len(words)) < 0.2
            owner = np.repeat(labels, lengths)
            words[topical] = topics[owner[topical], rng.integers(0, 40, size=int(topical.sum()))]
            tokens = vocab[words]
            texts = [" ".join(part) for part in np.split(tokens, np.cumsum(lengths)[:-1])]
            for i in np.flatnonzero(rng.random(n) < 0.005):
                j = int(rng.integers(0, n))
                texts[i], labels[i] = texts[j], labels[j]
            batch = pa.record_batch([pa.array(np.arange(start, start + n)), pa.array(texts),
                                     pa.array(np.array(CLASSES)[labels])], schema=schema)
            writer.write_batch(batch)
    os.replace(tmp, path)


def dataset(rows: int) -> Path:
    """The cached CSV with ``rows`` rows (generated on first use)."""
    folder = cache_dir() / "bench" / "data_prep"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic-v{GENERATOR_VERSION}-{rows}.csv"
    if not path.is_file():
        started = time.perf_counter()
        generate_csv(path, rows)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return path


def run_child(csv: Path, out: Path) -> dict:
    """Prepare ``csv`` in a fresh interpreter; return its timing, result and peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(csv), str(out)], stdout=subprocess.PIPE,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed on {csv} (exit {proc.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def main() -> None:
    runs = {}
    with tempfile.TemporaryDirectory(prefix="tk-bench-data-") as tmp:
        for rows in SIZES:
            csv = dataset(rows)
            runs[rows] = run_child(csv, Path(tmp) / f"out-{rows}")
            r = runs[rows]
            print(f"{rows:>9,} rows: prepare {r['seconds']:.1f} s ({rows / r['seconds']:,.0f} rows/s), "
                  f"wall {r['wall_seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, splits {r['rows']}, "
                  f"leakage removed {r['duplicates_removed']}")
    small, large = runs[SIZES[0]], runs[SIZES[1]]
    ratio = large["seconds"] / small["seconds"]
    summary = {
        "rows_per_s": round(SIZES[1] / large["seconds"], 1),
        "rows_per_s_100k": round(SIZES[0] / small["seconds"], 1),
        "peak_rss_mb_1m": round(large["peak_rss_mb"], 1),
        "peak_rss_mb_100k": round(small["peak_rss_mb"], 1),
        "seconds_1m": round(large["seconds"], 2),
        "seconds_100k": round(small["seconds"], 2),
        "time_ratio_1m_100k": round(ratio, 3),
        # Throughput once fixed costs (imports, tokenizer, 20k-row token sample, report) are taken out.
        "marginal_rows_per_s": round((SIZES[1] - SIZES[0]) / max(large["seconds"] - small["seconds"], 1e-9), 1),
        "goal_peak_rss_mb": 1536,
        "goal_time_ratio": 11,
    }
    print(f"time ratio 1M/100k = {ratio:.2f} (goal <= 11), peak RSS 1M = {large['peak_rss_mb']:.0f} MB "
          "(goal <= 1536)")
    from transferkit.hardware import benchmark_host

    print(json.dumps({**summary, **benchmark_host()}))


if __name__ == "__main__":
    main()
