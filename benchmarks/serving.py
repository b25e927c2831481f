"""Serving benchmark: in-process ONNX Runtime int8 vs the local Triton serving the same int8 graph.

Both sides do the same work per request: one raw movie-review sentence in, logits and a label out
(the ``tokenizers`` tokenizer + the dynamic-int8 MiniLM classifier graph). Same thread budget: ONNX
Runtime gets 2 threads in total on both sides.

- in-process: ``c`` client threads share one ``InferenceSession`` and tokenize + run one sentence each;
- Triton: the text ensemble (tokenizer -> graph -> postprocess) in the real local server (python-backend
  graph model: 2 instances x 1 ONNX Runtime thread), driven by transferkit's load generator over HTTP and
  gRPC at the same concurrency. The dynamic batcher's queue delay is tuned first over a few values (the
  20 ms often seen would add 20 ms to every request at low load).
- The two sides are measured in interleaved rounds and medians are reported, because other processes
  on this shared machine come and go.

Concurrency 1, 4, 16. Until the export step is available, the graph is exported here with
``torch.onnx.export`` and quantised with ``quantize_dynamic(per_channel=True)``. The machine is shared:
only the ratios of this one run mean something. The LAST stdout line is one JSON object with
``triton_vs_inprocess_c16``, ``p50_ms_c1`` and ``failed_requests``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

QUICK = os.environ.get("TK_BENCH_QUICK") == "1"  # a smoke run of the script itself, numbers meaningless
CONCURRENCY = (1, 4, 16)
REQUESTS = {1: 20, 4: 32, 16: 48} if QUICK else {1: 150, 4: 300, 16: 480}
QUEUE_DELAYS_US = (1000,) if QUICK else (0, 1000, 4000)
THREADS = 2
INSTANCES = 2
ROUNDS = 1 if QUICK else 3
MAX_LENGTH = 64
LABELS = ["negative", "positive"]
LEVEL_TIME_LIMIT_S = 60.0


def export_int8(out: Path) -> Path:
    """MiniLM + new 2-class head -> model.onnx (fp32) + model.int8.onnx, io_spec.json, tokenizer/."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from transferkit.export.io_spec import IOSpec, TensorSpec, VariantSpec
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    torch.manual_seed(0)
    resolved = resolve_model("minilm-l6")
    model = load_sequence_classifier(resolved, LABELS).eval()
    tokenizer = load_tokenizer(resolved)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(["a short example", "another one"], return_tensors="pt", padding=True)

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    out.mkdir(parents=True, exist_ok=True)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Logits(model), tuple(sample[n] for n in names), str(out / "model.onnx"),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    IOSpec(
        task="text-classification", model_type="bert", inputs=[TensorSpec(n, "int64", [-1, -1]) for n in names],
        outputs=[TensorSpec("logits", "float32", [-1, len(LABELS)])], labels=LABELS, max_length=MAX_LENGTH,
        opset=17, recommended_variant="int8",
        variants={"fp32": VariantSpec("model.onnx", "fp32", (out / "model.onnx").stat().st_size),
                  "int8": VariantSpec("model.int8.onnx", "int8", (out / "model.int8.onnx").stat().st_size)},
        tokenizer_files=sorted(p.name for p in (out / "tokenizer").iterdir()),
    ).save(out)
    return out


def sentences(count: int = 2000) -> list[str]:
    """Real movie-review sentences (builtin dataset), a fixed seeded sample."""
    from transferkit.data.builtin import load_builtin

    texts = load_builtin("builtin:movie-sentiment").column("text").to_pylist()
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.choice(len(texts), size=min(count, len(texts)), replace=False)]


def run_inprocess(export_dir: Path, texts: list[str], concurrency: int, requests: int) -> dict:
    """Closed-loop threads sharing one ORT session: tokenize + run one sentence per request."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(export_dir / "model.int8.onnx"), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_LENGTH)

    def infer(text: str) -> str:
        encoding = tokenizer.encode(text)
        feed = {"input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
        logits = session.run(["logits"], feed)[0]
        return LABELS[int(logits[0].argmax())]

    for text in texts[:8]:
        infer(text)
    lock = threading.Lock()
    issued, latencies, errors = 0, [], 0
    deadline = time.monotonic() + LEVEL_TIME_LIMIT_S

    def loop(k: int) -> None:
        nonlocal issued, errors
        i = k
        while time.monotonic() < deadline:
            with lock:
                if issued >= requests:
                    return
                issued += 1
            start = time.perf_counter()
            try:
                infer(texts[i % len(texts)])
            except Exception:
                with lock:
                    errors += 1
            else:
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
            i += concurrency

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - started
    return {"throughput_rps": round(len(latencies) / duration, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2), "errors": errors, "requests": requests}


class TritonUnderTest:
    """The local Triton with the int8 text ensemble at one queue delay (started once, driven many times)."""

    def __init__(self, export_dir: Path, delay_us: int) -> None:
        from transferkit.serve.local import LocalTriton
        from transferkit.serve.repository import RepositoryOptions, build_model_repository

        self._tmp = tempfile.TemporaryDirectory(prefix="tk-bench-serving-")
        repo = Path(self._tmp.name) / "repository"
        # Same thread budget as in-process: 2 ONNX Runtime threads in total (2 instances x 1 thread).
        options = RepositoryOptions(instance_kind="cpu", variant="int8", local_threads=THREADS // INSTANCES,
                                    local_instance_count=INSTANCES, max_queue_delay_us=delay_us, max_batch_size=32,
                                    preferred_batch_sizes=(4, 8, 16))
        build_model_repository(export_dir, "minilm", repo, options=options)
        self.server = LocalTriton(repo, models=["minilm"], exit_timeout=3)

    def __enter__(self) -> TritonUnderTest:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self._tmp.cleanup()

    def level(self, texts: list[str], protocol: str, concurrency: int, requests: int):
        from transferkit.serve.loadgen import LoadConfig, run_load

        config = LoadConfig(http_url=self.server.http_url, grpc_url=self.server.grpc_url,
                            metrics_url=self.server.metrics_url, model="minilm", protocols=(protocol,),
                            concurrency=(concurrency,), requests=requests, duration_s=LEVEL_TIME_LIMIT_S,
                            warmup=max(8, concurrency), texts=tuple(texts), outputs=("logits", "label"))
        return run_load(config).levels[0]


def _median(rows: list[dict], key: str) -> float:
    return round(float(np.median([row[key] for row in rows])), 2)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    texts = sentences()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="tk-bench-export-") as tmp:
        started = time.perf_counter()
        export_dir = export_int8(Path(tmp) / "export")
        print(f"export + int8 quantisation: {time.perf_counter() - started:.1f}s", flush=True)

        # 1. Tune the dynamic batcher's queue delay (gRPC; c=1 latency, c=16 throughput).
        tuning: dict[int, dict[int, object]] = {}
        for delay in QUEUE_DELAYS_US:
            with TritonUnderTest(export_dir, delay) as triton:
                tuning[delay] = {c: triton.level(texts, "grpc", c, REQUESTS[c]) for c in (1, 16)}
            failed += sum(lv.errors for lv in tuning[delay].values())
            c1, c16 = tuning[delay][1], tuning[delay][16]
            print(f"queue delay {delay:>5} us: c=1 p50 {c1.p50_ms:6.1f} ms, c=16 {c16.throughput_rps:7.1f} req/s "
                  f"(server batch {c16.server_avg_batch_size})", flush=True)
        top = max(t[16].throughput_rps for t in tuning.values())
        # Best c=16 throughput; within 5% of it, the lower c=1 latency wins.
        near_top = [d for d, t in tuning.items() if t[16].throughput_rps >= 0.95 * top]
        best = min(near_top, key=lambda d: tuning[d][1].p50_ms)

        # 2. Interleaved rounds (in-process, HTTP, gRPC per level) so that load from other processes on this
        #    shared machine hits both sides alike; medians over the rounds.
        rows: dict[tuple[str, int], list[dict]] = {}
        with TritonUnderTest(export_dir, best) as triton:
            for round_index in range(ROUNDS):
                for c in CONCURRENCY:
                    inproc = run_inprocess(export_dir, texts, c, REQUESTS[c])
                    rows.setdefault(("inprocess", c), []).append(inproc)
                    failed += inproc["errors"]
                    for protocol in ("http", "grpc"):
                        lv = triton.level(texts, protocol, c, REQUESTS[c])
                        failed += lv.errors
                        rows.setdefault((protocol, c), []).append(lv.to_dict())
                print(f"round {round_index + 1}/{ROUNDS} done", flush=True)

    print(f"\nqueue delay {best} us; Triton python backend ({INSTANCES} instances x {THREADS // INSTANCES} ORT "
          f"thread) vs in-process ORT ({THREADS} threads); medians of {ROUNDS} interleaved rounds:")
    print(f"{'conc':>4} {'in-proc':>8} {'http':>8} {'grpc':>8} {'best/in':>8} {'p50 in':>7} {'p50 http':>9} "
          f"{'p50 grpc':>9} {'batch':>6}")
    table = {}
    for c in CONCURRENCY:
        base = _median(rows[("inprocess", c)], "throughput_rps")
        http = _median(rows[("http", c)], "throughput_rps")
        grpc = _median(rows[("grpc", c)], "throughput_rps")
        batches = [r["server_avg_batch_size"] for r in rows[("grpc", c)] if r["server_avg_batch_size"]]
        table[c] = {"inprocess_rps": base, "http_rps": http, "grpc_rps": grpc,
                    "inprocess_p50_ms": _median(rows[("inprocess", c)], "p50_ms"),
                    "http_p50_ms": _median(rows[("http", c)], "p50_ms"),
                    "grpc_p50_ms": _median(rows[("grpc", c)], "p50_ms"),
                    "server_avg_batch_size": round(float(np.median(batches)), 2) if batches else None}
        row = table[c]
        print(f"{c:>4} {base:>8.1f} {http:>8.1f} {grpc:>8.1f} {max(http, grpc) / base:>8.2f} "
              f"{row['inprocess_p50_ms']:>7.1f} {row['http_p50_ms']:>9.1f} {row['grpc_p50_ms']:>9.1f} "
              f"{row['server_avg_batch_size'] or 0:>6.2f}")

    result = {
        "triton_vs_inprocess_c16": round(max(table[16]["http_rps"], table[16]["grpc_rps"])
                                         / table[16]["inprocess_rps"], 3),
        "triton_http_vs_inprocess_c16": round(table[16]["http_rps"] / table[16]["inprocess_rps"], 3),
        "triton_grpc_vs_inprocess_c16": round(table[16]["grpc_rps"] / table[16]["inprocess_rps"], 3),
        "p50_ms_c1": min(table[1]["http_p50_ms"], table[1]["grpc_p50_ms"]),
        "inprocess_p50_ms_c1": table[1]["inprocess_p50_ms"],
        "failed_requests": failed,
        "queue_delay_us": best,
        "rounds": ROUNDS,
        "levels": {str(c): row for c, row in table.items()},
    }
    from transferkit.hardware import benchmark_host

    print(json.dumps({**result, **benchmark_host()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
