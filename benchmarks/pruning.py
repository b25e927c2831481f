"""Pruning benchmark: structured pruning + distillation + int8 against the unpruned int8 export.

One run, one machine, 2 threads everywhere. The model and data come the way ``benchmarks/inference.py`` finds them
(a fine-tuned MiniLM movie-sentiment classifier from the bench cache, else a frozen-MiniLM feature-extraction head
trained with ``transferkit train``). ``transferkit prune --sparsity SPARSITY`` removes that fraction of the encoder
layers' parameters (feed-forward neurons first, by squared-gradient importance on the training split) and recovers
by distillation from the unpruned model (one epoch; cached under ``$TRANSFERKIT_CACHE/bench/pruning``). Both
models go through ``transferkit export --target cpu`` (parity gate; accuracy on the full test split; cached per
weights file under ``$TRANSFERKIT_CACHE/bench/pruning/exports``).

Inputs: "long" batches are consecutive test sentences concatenated until they fill 128 tokens (every column is a
real token: the int8 graph's padding trim removes nothing), "real" batches are 32 test sentences padded to the
longest. Rows are timed in interleaved rounds; medians reported.

The LAST stdout line is one JSON object with ``pruned_int8_vs_int8_long``, ``pruned_int8_vs_pytorch_long``,
``pruned_accuracy_drop_pt`` (pruned int8 vs unpruned fp32, test split), ``kept_parameter_fraction`` (encoder
layers), the real-sentence ratios, the Pareto table, ``cpu_model`` and ``cpu_int8_isa``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

THREADS = 2
SEQ = 128
BATCH = 32
QUICK = os.environ.get("TK_BENCH_QUICK") == "1"  # a smoke run of the script itself, numbers meaningless
SPARSITY = float(os.environ.get("TK_PRUNE_SPARSITY", "0.7"))  # 0.5 only narrows the FFN: 1.3x
ROUNDS = 2 if QUICK else int(os.environ.get("TK_PRUNE_ROUNDS", "5"))
B32_RUNS = 1 if QUICK else 3
B1_RUNS = 5 if QUICK else 20


def say(message: str) -> None:
    print(message, flush=True)


def _inference_module() -> Any:
    """``benchmarks/inference.py``: how the benchmarks find or build the fine-tuned model."""
    spec = importlib.util.spec_from_file_location("bench_inference", Path(__file__).with_name("inference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pruned_model(model_dir: Path, data_dir: Path, root: Path) -> tuple[Path, dict[str, Any]]:
    """The pruned + distilled model (cached per source model, sparsity and quick mode)."""
    from transferkit.assets import cache_lock
    from transferkit.prune import PruneConfig, prune_model

    out = root / f"{model_dir.name}-s{SPARSITY:g}{'-quick' if QUICK else ''}"
    config = PruneConfig(model_dir, data_dir, out, sparsity=SPARSITY, max_steps=5 if QUICK else None,
                         importance_samples=64 if QUICK else 1024, distill_alpha=0.5, distill_temperature=2.0)
    with cache_lock("bench-pruning-model"):
        summary = out / "prune_summary.json"
        cached = json.loads(summary.read_text()) if summary.is_file() else None
        wanted = config.to_dict()
        if cached is None or any(wanted.get(k) != v for k, v in cached.get("config", {"?": 0}).items()):
            say(f"transferkit prune --sparsity {SPARSITY} (importance + one distillation epoch; cached)...")
            started = time.perf_counter()
            prune_model(config)
            say(f"  done in {time.perf_counter() - started:.0f} s")
            cached = json.loads(summary.read_text())
    return out, cached


def cached_export(directory: Path, data_dir: Path, root: Path) -> dict[str, Any]:
    """``transferkit export --target cpu`` of ``directory`` (parity gate, full test split), cached per weights file."""
    from transferkit.assets import cache_lock
    from transferkit.export import ExportConfig, export_model

    weights = (directory / "model.safetensors").stat()
    key = hashlib.sha256(f"{directory.resolve()}:{weights.st_size}:{weights.st_mtime_ns}".encode()).hexdigest()[:12]
    out = root / f"{directory.name}-{key}"
    with cache_lock(f"bench-pruning-export-{key}"):
        if not (out / "metrics.json").is_file():
            say(f"transferkit export --target cpu of {directory} (parity gate, full test split; cached)...")
            export_model(ExportConfig(directory, data_dir, out, target="cpu", threads=THREADS, max_drop=100.0,
                                      latency_runs=0, throughput_runs=0))
    result = json.loads((out / "metrics.json").read_text())
    say(f"  {directory.name}: parity max |diff| {result['parity_max_abs_diff']:.2g}; test accuracy fp32 "
        f"{result['variants']['fp32']['accuracy']:.2%}, int8 {result['variants']['int8']['accuracy']:.2%}")
    return {**result, "dir": out}


def long_texts(tokenizer: Any, texts: list[str], rows: int) -> list[str]:
    """Consecutive sentences joined until each text fills ``SEQ`` tokens."""
    out, current, index = [], [], 0
    while len(out) < rows:
        current.append(texts[index % len(texts)])
        index += 1
        if len(tokenizer(" ".join(current))["input_ids"]) >= SEQ:
            out.append(" ".join(current))
            current = []
    return out


class Row:
    def __init__(self, name: str, run: Any) -> None:
        self.name, self.run = name, run
        self.times: dict[str, list[float]] = {"long": [], "real": [], "b1": []}

    def time_round(self, feeds: dict[str, Any]) -> None:
        for key, runs in (("long", B32_RUNS), ("real", B32_RUNS), ("b1", B1_RUNS)):
            for _ in range(runs):
                start = time.perf_counter()
                self.run(feeds[key])
                self.times[key].append(time.perf_counter() - start)

    def throughput(self, key: str) -> float:
        return BATCH / float(np.median(self.times[key]))

    def b1_ms(self) -> float:
        return float(np.median(self.times["b1"])) * 1000


def ort_row(name: str, path: Path) -> Row:
    from transferkit.export.runtime import ort_session

    session = ort_session(path, THREADS)
    names = [i.name for i in session.get_inputs()]
    return Row(name, lambda feeds: session.run(["logits"], {n: feeds[n] for n in names}))


def torch_row(name: str, model_dir: Path) -> Row:
    import torch

    from transferkit.models.loading import load_sequence_classifier

    model = load_sequence_classifier(model_dir).eval()

    def run(feeds: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits

    return Row(name, run)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from transferkit.assets import cache_dir
    from transferkit.data.prepared import load_prepared
    from transferkit.export import IOSpec
    from transferkit.export.runtime import encode
    from transferkit.hardware import benchmark_host
    from transferkit.models.loading import load_tokenizer
    from transferkit.prune.report import PARETO_HEADERS, Variant, pareto_rows

    torch.set_num_threads(THREADS)
    bench = _inference_module()
    bench_root = cache_dir() / "bench"
    model_dir, data_dir, model_note = (bench.find_trained_model(bench_root)
                                       or bench.build_fallback_model(bench_root / "inference"))
    say(f"model: {model_note}")
    dataset = load_prepared(data_dir)
    pruned_dir, prune_summary = pruned_model(model_dir, data_dir, bench_root / "pruning")
    plan = prune_summary["plan"]
    say(f"pruned: {plan['keep_layers']} layers x {plan['keep_ffn']} feed-forward neurons, "
        f"{prune_summary['kept_parameter_fraction']:.1%} of encoder-layer parameters kept; validation accuracy "
        f"{prune_summary['validation_before']['accuracy']:.2%} -> {prune_summary['validation_after']['accuracy']:.2%}")

    exports = {name: cached_export(directory, data_dir, bench_root / "pruning" / "exports")
               for name, directory in (("unpruned", model_dir), ("pruned", pruned_dir))}
    tokenizer = load_tokenizer(model_dir)
    names = [t.name for t in IOSpec.load(exports["unpruned"]["dir"]).inputs]
    texts = dataset.texts("test")
    long_feeds = encode(tokenizer, long_texts(tokenizer, texts, BATCH), None, names, SEQ)
    assert long_feeds["input_ids"].shape == (BATCH, SEQ) and long_feeds["attention_mask"].all(), "long inputs"
    feeds = {"long": long_feeds, "real": encode(tokenizer, texts[:BATCH], None, names, SEQ),
             "b1": {k: v[:1] for k, v in long_feeds.items()}}
    say(f"inputs: long {long_feeds['input_ids'].shape} (no padding), real {feeds['real']['input_ids'].shape}")
    rows = [torch_row("PyTorch fp32", model_dir), torch_row("PyTorch pruned fp32", pruned_dir),
            ort_row("fp32", exports["unpruned"]["dir"] / "model.onnx"),
            ort_row("int8", exports["unpruned"]["dir"] / "model.int8.onnx"),
            ort_row("pruned fp32", exports["pruned"]["dir"] / "model.onnx"),
            ort_row("pruned int8", exports["pruned"]["dir"] / "model.int8.onnx")]
    for row in rows:
        for key in feeds:
            row.run(feeds[key])
    say(f"timing {len(rows)} rows: {ROUNDS} interleaved rounds, {THREADS} threads...")
    for _ in range(ROUNDS):
        for row in rows:
            row.time_round(feeds)

    by = {row.name: row for row in rows}
    say("")
    say(f"{'row':22s} {'long seq/s':>11s} {'real seq/s':>11s} {'b=1 long ms':>12s}")
    for row in rows:
        say(f"{row.name:22s} {row.throughput('long'):11.1f} {row.throughput('real'):11.1f} {row.b1_ms():12.2f}")
    variants = []
    for key, export_name, graph in (("fp32", "unpruned", "fp32"), ("int8", "unpruned", "int8"),
                                    ("pruned fp32", "pruned", "fp32"), ("pruned int8", "pruned", "int8")):
        v = exports[export_name]["variants"][graph]
        # Latency of a batch of 32 long inputs: the serving cost per request batch.
        variants.append(Variant(key, v["size_bytes"], 1000 * BATCH / by[key].throughput("long"), v["accuracy"]))
    table = pareto_rows(variants, "fp32")
    say("")
    say("| " + " | ".join(PARETO_HEADERS) + " |")
    say("|" + "---|" * len(PARETO_HEADERS))
    for line in table:
        say("| " + " | ".join(str(c) for c in line) + " |")
    accuracy = {v.name: v.accuracy for v in variants}
    fp32_accuracy, pruned_int8_accuracy = accuracy["fp32"], accuracy["pruned int8"]
    summary = {
        "pruned_int8_vs_int8_long": round(by["pruned int8"].throughput("long") / by["int8"].throughput("long"), 3),
        "pruned_int8_vs_pytorch_long": round(by["pruned int8"].throughput("long")
                                             / by["PyTorch fp32"].throughput("long"), 3),
        "pruned_accuracy_drop_pt": round(100 * (fp32_accuracy - pruned_int8_accuracy), 3),
        "kept_parameter_fraction": round(prune_summary["kept_parameter_fraction"], 4),
        "pruned_int8_vs_int8_real": round(by["pruned int8"].throughput("real") / by["int8"].throughput("real"), 3),
        "pruned_int8_vs_pytorch_real": round(by["pruned int8"].throughput("real")
                                             / by["PyTorch fp32"].throughput("real"), 3),
        "int8_vs_pytorch_long": round(by["int8"].throughput("long") / by["PyTorch fp32"].throughput("long"), 3),
        "pruned_fp32_accuracy_drop_pt": round(100 * (fp32_accuracy - accuracy["pruned fp32"]), 3),
        "int8_accuracy_drop_pt": round(100 * (fp32_accuracy - accuracy["int8"]), 3),
        "accuracy": {v.name: round(v.accuracy, 4) for v in variants},
        "size_mb": {v.name: round(v.size_bytes / 1e6, 2) for v in variants},
        "pareto_front": [line[0] for line in table if line[-1] == "yes"],
        "throughput_long_seq_per_s": {row.name: round(row.throughput("long"), 2) for row in rows},
        "throughput_real_seq_per_s": {row.name: round(row.throughput("real"), 2) for row in rows},
        "parity_max_abs_diff_pruned": exports["pruned"]["parity_max_abs_diff"],
        "plan": {k: plan[k] for k in ("keep_layers", "keep_ffn", "keep_heads")}, "sparsity": SPARSITY,
        "prune_seconds": prune_summary.get("seconds"), "model": model_note, "threads": THREADS, "seq": SEQ,
        "quick": QUICK, **benchmark_host(),
    }
    say(f"pruned+int8 on long inputs: {summary['pruned_int8_vs_int8_long']}x unpruned int8 (goal >= 1.5), accuracy "
        f"drop vs fp32 {summary['pruned_accuracy_drop_pt']} pt (goal <= 1)")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
