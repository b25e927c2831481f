"""Long documents: head-only at 64 tokens vs ``max_length auto`` + head_tail vs chunk-and-aggregate.

Data: documents of neutral filler (the Lee background corpus of news sentences, gensim 4.4.0's test data) of
300-1,500 MiniLM tokens with ONE labelled movie-review sentence (``builtin:movie-sentiment``) placed at a
random position; the label is that sentence's. Train / validation / test documents carry disjoint movie
sentences. The data goes through ``transferkit data prepare`` from a CSV with its own column names, as a
user's would.

Three fine-tunes of ``minilm-l6`` with the same seed and settings (strategy full, max_steps fixed):

- ``head64``: ``--max-length 64 --truncation head`` (what the seed did: the first 64 tokens);
- ``head_tail``: ``--max-length auto --truncation head_tail`` (auto = p95 of the training lengths rounded up
  to 8, capped at MiniLM's 512);
- ``chunk``: ``--long-documents chunk --max-length 128 --stride 32 --aggregation max`` (every window
  inherits its document's label; the per-class max over windows says "some window holds the sentence");
  ``--window/--stride/--aggregation/--learning-rate`` change these;
- ``chunk_document``: the same windows with ``--chunk-loss document`` (a batch holds 2 whole documents, ~17
  windows as the 16 of ``chunk``; the loss is on the max-aggregated logits, as documents are scored), same
  number of optimizer steps.

Each is evaluated on the test split in-process (``transferkit evaluate``'s inference); the better chunk model
(``chunk_accuracy``; both are in ``runs``) is also
exported (ONNX, parity on whole documents) and served by the real local Triton (the ensemble over the graph,
tokenizer emitting windows, postprocess aggregating per request): ``chunk_triton_vs_inprocess`` is Triton's
documents/s over in-process ONNX Runtime documents/s at concurrency 1 on the same graph.

Goals (issue 23): chunk >= 80% where head-only is near chance; Triton/in-process >= 0.8. The machine has 2
shared cores: sizes are small and ``TK_BENCH_QUICK=1`` runs a smoke version (numbers meaningless). The LAST
stdout line is one JSON object with ``head64_accuracy``, ``head_tail_accuracy``, ``chunk_accuracy``,
``chunk_triton_vs_inprocess`` and the details.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import long_document_rows

QUICK = os.environ.get("TK_BENCH_QUICK") == "1"


def write_csv(path: Path, sizes: dict[str, int], seed: int) -> Path:
    """``body,verdict,part``: documents of :func:`long_document_rows` with the split in ``part``."""
    offset = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body", "verdict", "part"])
        for index, (split, count) in enumerate(sizes.items()):
            for text, label in long_document_rows(count, seed=seed + index, offset=offset):
                writer.writerow([text, label, split])
            offset += count
    return path


def train_and_evaluate(name: str, data: Path, work: Path, seed: int, steps: int, **options: object) -> dict:
    """Fine-tune, evaluate on test; wall times and accuracy."""
    from transferkit.evaluate.evaluation import EvaluateConfig, evaluate_model
    from transferkit.train import TrainConfig, run_training

    started = time.perf_counter()
    settings = {"batch_size": 16, **options}
    result = run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=work / name,
                                      max_steps=steps, seed=seed, **settings))
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluate_model(EvaluateConfig(model_dir=result.out_dir, data_dir=data, out_dir=work / f"{name}-eval",
                                  progress=False))
    metrics = json.loads((work / f"{name}-eval" / "metrics.json").read_text())
    summary = json.loads((result.out_dir / "training_summary.json").read_text())
    return {"accuracy": metrics["accuracy"], "train_s": round(train_s, 1),
            "evaluate_s": round(time.perf_counter() - started, 1), "max_length": summary["resolved"]["max_length"],
            "model_dir": str(result.out_dir)}


def triton_ratio(model_dir: Path, data: Path, work: Path, documents: int) -> dict:
    """Export the chunk model; documents/s through the local Triton ensemble vs in-process ONNX Runtime."""
    import pyarrow.parquet as pq

    from transferkit.export.config import ExportConfig
    from transferkit.export.step import export_model
    from transferkit.serve.control import TritonControl
    from transferkit.serve.local import LocalTriton
    from transferkit.serve.repository import RepositoryOptions, build_model_repository, load_export
    from transferkit.serve.smoke import reference_logits

    out = work / "onnx"
    exported_result = export_model(ExportConfig(model_dir=model_dir, data_dir=data, out_dir=out, target="cpu",
                                                threads=2, latency_runs=3, throughput_runs=1))
    exported = load_export(out)
    texts = pq.read_table(data / "test.parquet").column("text").to_pylist()[:documents]
    started = time.perf_counter()
    reference = reference_logits(exported, texts, threads=2)
    inprocess = len(texts) / (time.perf_counter() - started)
    repo = work / "repo"
    bundle = build_model_repository(out, "docs", repo, options=RepositoryOptions(instance_kind="cpu",
                                                                                local_threads=2))
    shutil.rmtree(repo / "docs" / "configs")  # the production ensemble: tokenizer -> graph -> postprocess
    with LocalTriton(repo, models=bundle.models, exit_timeout=3) as server, \
            TritonControl(server.http_url) as control:
        control.infer_texts("docs", texts[:2])  # warm-up
        started = time.perf_counter()
        served = np.stack([control.infer_texts("docs", [text])["logits"][0] for text in texts])
        triton = len(texts) / (time.perf_counter() - started)
    agree = float(np.mean(served.argmax(axis=1) == reference.argmax(axis=1)))
    return {"triton_docs_per_s": round(triton, 2), "inprocess_docs_per_s": round(inprocess, 2),
            "ratio": round(triton / inprocess, 3), "label_agreement": agree,
            "max_abs_logit_diff": float(np.max(np.abs(served - reference))),
            "recommended_variant": exported.variant,
            "parity_documents": [c.__dict__ for c in exported_result.parity_cases if c.padding == "documents"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40 if QUICK else 600)
    parser.add_argument("--validation", type=int, default=16 if QUICK else 100)
    parser.add_argument("--test", type=int, default=16 if QUICK else 200)
    parser.add_argument("--steps", type=int, default=4 if QUICK else 150, help="Optimizer steps per run.")
    parser.add_argument("--chunk-steps", type=int, default=None,
                        help="Optimizer steps of the chunk run (default 4 x --steps: a 128-token window is a quarter "
                        "of head_tail's 512 tokens, so both runs train on the same number of tokens).")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--window", type=int, default=128, help="The chunk runs' max_length (tokens per window).")
    parser.add_argument("--stride", type=int, default=32, help="The chunk runs' overlap between windows.")
    parser.add_argument("--aggregation", default="max", choices=("max", "mean"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--triton-documents", type=int, default=8 if QUICK else 50)
    parser.add_argument("--only", default="head64,head_tail,chunk,chunk_document", help="Comma-separated runs.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.hardware import detect_cpu

    work = Path(tempfile.mkdtemp(prefix="long-docs-bench-"))
    try:
        source = write_csv(work / "documents.csv", {"train": args.train, "validation": args.validation,
                                                    "test": args.test}, args.seed)
        prepared = prepare_dataset(DataPrepConfig(dataset=str(source), out=work / "data", text_column="body",
                                                  label_column="verdict", split_column="part"))
        data = prepared.out_dir
        runs = {
            "head64": {"max_length": "64", "truncation": "head"},
            "head_tail": {"truncation": "head_tail"},
            "chunk": {"max_length": str(args.window), "long_documents": "chunk", "stride": args.stride,
                      "aggregation": args.aggregation},
            "chunk_document": {"max_length": str(args.window), "long_documents": "chunk", "stride": args.stride,
                               "aggregation": args.aggregation, "chunk_loss": "document", "batch_size": 2},
        }
        chunk_steps = args.chunk_steps or 4 * args.steps
        results = {name: train_and_evaluate(name, data, work, args.seed,
                                            chunk_steps if name.startswith("chunk") else args.steps,
                                            **{"learning_rate": args.learning_rate, **runs[name]})
                   for name in args.only.split(",")}
        chunked = [name for name in ("chunk", "chunk_document") if name in results]
        best_chunk = max(chunked, key=lambda name: results[name]["accuracy"]) if chunked else None
        triton = triton_ratio(Path(results[best_chunk]["model_dir"]), data, work, args.triton_documents) \
            if best_chunk else {}
        summary = {
            "head64_accuracy": results.get("head64", {}).get("accuracy"),
            "head_tail_accuracy": results.get("head_tail", {}).get("accuracy"),
            "chunk_accuracy": results[best_chunk]["accuracy"] if best_chunk else None, "chunk_run": best_chunk,
            "chunk_window_loss_accuracy": results.get("chunk", {}).get("accuracy"),
            "chunk_document_loss_accuracy": results.get("chunk_document", {}).get("accuracy"),
            "chunk_triton_vs_inprocess": triton.get("ratio"),
            "data": {"rows": prepared.rows, "token_length": prepared.token_length,
                     "long_documents": prepared.long_documents},
            "runs": {name: {k: v for k, v in r.items() if k != "model_dir"} for name, r in results.items()},
            "triton": triton, "steps": args.steps, "chunk_steps": chunk_steps, "seed": args.seed,
            "learning_rate": args.learning_rate, "window": args.window, "stride": args.stride,
            "aggregation": args.aggregation, "quick": QUICK,
            "load_average": os.getloadavg(), "cpu": detect_cpu().to_dict(),
        }
        print(json.dumps(summary, default=str), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
