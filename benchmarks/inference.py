"""Inference benchmark: our int8 export against PyTorch eager, ONNX Runtime fp32 and Optimum's int8.

One run, one machine, 2 threads everywhere, the same MiniLM movie-sentiment classifier and the same
inputs: real movie-review sentences padded/truncated to 128 tokens. Rows:

- PyTorch eager fp32 (transformers' default SDPA attention, ``torch.inference_mode``);
- ONNX Runtime fp32: ``model.onnx`` from ``transferkit export``;
- ours int8: ``model.int8.onnx`` from ``transferkit export --target cpu``; its graph slices the batch's
  trailing all-padding columns off before the encoder (exact for sequence-level outputs; the parity gate
  and the accuracy gate run on it), so it does the work of the longest real sentence, not of 128 tokens;
- Optimum int8: ``optimum-onnx`` export + ``ORTQuantizer`` dynamic per-channel (AVX512-VNNI config when the
  CPU has it), built in its own venv under ``$TRANSFERKIT_CACHE/optimum-venv`` (it needs
  transformers<4.58); the row is skipped with a message when the registry cannot provide it;
- for the explanation, three int8 graphs we do not ship: ours with the in-graph padding trim removed (the
  encoder then runs on all 128 columns, as every other row does), the naive path (default SDPA export +
  ``quantize_dynamic``) and ``onnxruntime.transformers.optimizer`` fusion (Attention/SkipLayerNorm/Gelu)
  before quantization.

Every ONNX graph runs in this process with the same session options. Rows are timed in interleaved rounds
and medians reported because the machine is shared. Model: a fine-tuned MiniLM found under
``$TRANSFERKIT_CACHE/bench`` (from the fine-tune benchmarks), else a feature-extraction head trained here
with ``transferkit train`` (frozen MiniLM + mean pooling; cached). Accuracy: the test split of the
model's prepared dataset, through the export step's accuracy gate.

int8 recipes: "int8 (ours)" is the default portable recipe (7-bit weights: the same predictions on every CPU);
"int8 vnni recipe" is ``--cpu-isa vnni`` (8-bit weights, exact only on VNNI/AMX CPUs), quantized from the same
fp32 graph. Where ``qemu-user`` exists, both also run on the first ``EMULATED_ROWS`` test sentences under an
emulated AVX2-only CPU, reporting how many predictions change from this host's.

The LAST stdout line is one JSON object with ``int8_vs_optimum``, ``int8_vs_pytorch``, ``int8_vs_fp32_ort``,
``int8_accuracy_drop_pt``, ``int8_b1_p50_ms``, the vnni recipe's figures, ``cpu_model`` and ``cpu_int8_isa``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

THREADS = 2
SEQ = 128
BATCH = 32
QUICK = os.environ.get("TK_BENCH_QUICK") == "1"  # a smoke run of the script itself, numbers meaningless
ROUNDS = 2 if QUICK else 7
B32_RUNS = 1 if QUICK else 3
B1_RUNS = 5 if QUICK else 30
EMULATED_ROWS = 16 if QUICK else 64  # emulation runs MiniLM ~50x slower than native
OPTIMUM_REQUIREMENTS = ["torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "transformers==4.57.6",
                        "onnxruntime==1.32.0"]
OPTIMUM_SCRIPT = r"""
import sys
from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
model_dir, out, vnni = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
model.save_pretrained(out)
make = AutoQuantizationConfig.avx512_vnni if vnni else AutoQuantizationConfig.avx2
config = make(is_static=False, per_channel=True)
ORTQuantizer.from_pretrained(model).quantize(save_dir=out, quantization_config=config)
"""

log = logging.getLogger("bench.inference")


def say(message: str) -> None:
    print(message, flush=True)


# --- model and data --------------------------------------------------------------------------------


MIN_TEST_ROWS = 1000  # the full movie-sentiment test split (1,057 rows), not a smoke-run slice


def find_trained_model(bench_root: Path) -> tuple[Path, Path, str] | None:
    """The best MiniLM movie-sentiment classifier a fine-tune benchmark left in the cache, with its data."""
    found = []
    for summary_path in bench_root.rglob("training_summary.json"):
        if "inference" in summary_path.parts:
            continue  # our own fallback model
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "pruning" in summary:
            continue  # a pruned model (benchmarks/pruning.py) is not a fine-tune benchmark's
        data_dir = Path(summary.get("data", {}).get("dir", ""))
        try:
            source = json.loads((data_dir / "schema.json").read_text()).get("source")
            test_rows = json.loads((data_dir / "stats.json").read_text())["rows"]["test"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        model_dir = summary_path.parent
        if (summary.get("model", {}).get("reference") == "minilm-l6" and source == "builtin:movie-sentiment"
                and int(test_rows) >= MIN_TEST_ROWS and summary.get("strategy") in ("full", "feature_extraction")
                and (model_dir / "model.safetensors").is_file()):
            best = (summary.get("best") or {}).get("value") or 0.0
            found.append((-float(best), str(model_dir), model_dir, data_dir, summary["strategy"], best))
    if not found:
        return None
    _, _, model_dir, data_dir, strategy, best = sorted(found)[0]
    return model_dir, data_dir, (f"fine-tuned ({strategy}, validation accuracy {best:.2%}) model from a fine-tune "
                                 f"benchmark: {model_dir}")


def build_fallback_model(root: Path) -> tuple[Path, Path, str]:
    """Prepared movie data + a frozen-MiniLM feature-extraction head trained with ``transferkit train``."""
    from transferkit.assets import cache_lock
    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.train import run_training
    from transferkit.train.config import TrainConfig

    data_dir, model_dir = root / "movie-data", root / "model-feature-extraction"
    with cache_lock("bench-inference-model"):
        if not (data_dir / "test.parquet").is_file():
            say("preparing builtin:movie-sentiment (seeded 80/10/10 split)...")
            prepare_dataset(DataPrepConfig(dataset="builtin:movie-sentiment", out=data_dir, seed=42))
        if not (model_dir / "training_summary.json").is_file():
            say("training a feature-extraction head on frozen MiniLM (cached for later runs)...")
            run_training(TrainConfig(data_dir=data_dir, model="minilm-l6", strategy="feature_extraction",
                                     out_dir=model_dir, max_length=64, seed=42))
    return model_dir, data_dir, ("no fine-tuned model in the cache: frozen MiniLM + head trained here with "
                                 f"`transferkit train --strategy feature_extraction` ({model_dir})")


# --- Optimum in its own venv -------------------------------------------------------------------------


def optimum_python(cache: Path) -> Path | None:
    """Python of a venv with optimum-onnx (built on first use); None with a message when impossible."""
    from transferkit.assets import cache_lock

    venv = cache / "optimum-venv"
    marker = venv / ".transferkit-requirements"
    wanted = "\n".join(OPTIMUM_REQUIREMENTS)
    with cache_lock("optimum-venv"):
        if marker.is_file() and marker.read_text() == wanted:
            return venv / "bin" / "python"
        say(f"building {venv} with {' '.join(OPTIMUM_REQUIREMENTS)} (first run only)...")
        partial = cache / "optimum-venv.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True, capture_output=True, text=True)
            subprocess.run([str(partial / "bin" / "python"), "-m", "pip", "install", "--quiet", *OPTIMUM_REQUIREMENTS],
                           check=True, capture_output=True, text=True, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = (getattr(exc, "stderr", "") or "").strip().splitlines()
            say(f"optimum row skipped: the package registry could not provide {OPTIMUM_REQUIREMENTS} "
                f"({detail[-1] if detail else exc})")
            shutil.rmtree(partial, ignore_errors=True)
            return None
        shutil.rmtree(venv, ignore_errors=True)
        os.replace(partial, venv)  # the venv's python resolves its prefix from pyvenv.cfg: moving is safe
        marker.write_text(wanted)
    return venv / "bin" / "python"


def optimum_int8(python: Path, model_dir: Path, out: Path) -> Path | None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "1" if "avx512_vnni" in flags else "0"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(python), "-c", OPTIMUM_SCRIPT, str(model_dir), str(out), vnni],
                          capture_output=True, text=True, env=env, timeout=1800)
    path = out / "model_quantized.onnx"
    if proc.returncode != 0 or not path.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        say(f"optimum row skipped: its export/quantization failed ({last})")
        return None
    return path


# --- graphs we do not ship (the explanation rows) ----------------------------------------------------


def naive_int8(model_dir: Path, sample: dict[str, np.ndarray], out: Path) -> Path:
    """The straightforward path: default (SDPA) export + quantize_dynamic per channel, no rewrite."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from transferkit.models.loading import load_sequence_classifier

    model = load_sequence_classifier(model_dir).eval()
    names = list(sample)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors, strict=True))).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(), tuple(torch.from_numpy(sample[n]) for n in names), str(out / "naive.onnx"),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    quantize_dynamic(str(out / "naive.onnx"), str(out / "naive.int8.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8)
    return out / "naive.int8.onnx"


def fused_int8(model_dir: Path, sample: dict[str, np.ndarray], out: Path) -> Path | None:
    """onnxruntime.transformers.optimizer fusion of our eager export, then the same dynamic quantization."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from transferkit.export.onnx_export import export_onnx, load_exportable

    labels = json.loads((model_dir / "labels.json").read_text())
    exportable = load_exportable(model_dir, labels, model_dir)
    export_onnx(exportable, sample, out / "eager.onnx", 17)
    config = exportable.model.config
    optimized = optimize_model(str(out / "eager.onnx"), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    fused = optimized.get_fused_operator_statistics()
    say(f"  fused operators: { {k: v for k, v in fused.items() if v} }")
    optimized.save_model_to_file(str(out / "fused.onnx"))
    quantize_dynamic(str(out / "fused.onnx"), str(out / "fused.int8.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out / "fused.int8.onnx"


def without_padding_trim(path: Path, out: Path) -> Path:
    """Our int8 graph with the in-graph padding trim removed: the encoder runs on all 128 columns."""
    import onnx

    from transferkit.export.onnx_export import TRIM_PREFIX

    model = onnx.load(str(path))
    kept = [node for node in model.graph.node if not node.name.startswith(TRIM_PREFIX)]
    for node in kept:
        for index, source in enumerate(node.input):
            if source.startswith(TRIM_PREFIX) and source.endswith("_trimmed"):
                node.input[index] = source[len(TRIM_PREFIX):-len("_trimmed")]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(out))
    return out


# --- timing -------------------------------------------------------------------------------------------


class Row:
    def __init__(self, name: str, run: Any, note: str = "") -> None:
        self.name, self.run, self.note = name, run, note
        self.b1: list[float] = []
        self.b32: list[float] = []

    def time_round(self, feeds_b1: Any, feeds_b32: Any) -> None:
        for _ in range(B32_RUNS):
            start = time.perf_counter()
            self.run(feeds_b32)
            self.b32.append(time.perf_counter() - start)
        for _ in range(B1_RUNS):
            start = time.perf_counter()
            self.run(feeds_b1)
            self.b1.append(time.perf_counter() - start)

    @property
    def throughput(self) -> float:
        return BATCH / float(np.median(self.b32))

    def latency(self, q: float) -> float:
        return float(np.percentile(self.b1, q)) * 1000


def ort_row(name: str, path: Path, note: str = "") -> Row:
    from transferkit.export.runtime import ort_session

    session = ort_session(path, THREADS)
    names = [i.name for i in session.get_inputs()]
    return Row(name, lambda feeds: session.run(["logits"], {n: feeds[n] for n in names}), note)


def torch_row(model_dir: Path) -> Row:
    import torch

    from transferkit.models.loading import load_sequence_classifier

    model = load_sequence_classifier(model_dir).eval()

    def run(feeds: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits

    return Row("PyTorch eager fp32", run, f"attention={model.config._attn_implementation}")


# --- main --------------------------------------------------------------------------------------------


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # onnxruntime.quantization logs to the root logger; only errors matter for this table.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from transferkit.assets import cache_dir
    from transferkit.data.prepared import load_prepared
    from transferkit.export import ExportConfig, IOSpec, export_model
    from transferkit.export.runtime import encode
    from transferkit.hardware import benchmark_host
    from transferkit.models.loading import load_tokenizer

    torch.set_num_threads(THREADS)
    cache = cache_dir()
    bench_root = cache / "bench"
    picked = find_trained_model(bench_root) or build_fallback_model(bench_root / "inference")
    model_dir, data_dir, model_note = picked
    say(f"model: {model_note}")
    dataset = load_prepared(data_dir)
    say(f"data: {data_dir} (test split {dataset.table('test').num_rows} rows)")

    work = Path(tempfile.mkdtemp(prefix="tk-bench-inference-"))
    try:
        say("transferkit export --target cpu (accuracy on the full test split)...")
        started = time.perf_counter()
        result = export_model(ExportConfig(model_dir, data_dir, work / "ours", target="cpu", threads=THREADS,
                                           max_drop=100.0, latency_runs=0, throughput_runs=0))
        export_s = time.perf_counter() - started
        fp32_v, int8_v = result.variants["fp32"], result.variants["int8"]
        say(f"  done in {export_s:.1f} s; parity max |diff| {result.parity_max_abs_diff:.2g}; accuracy fp32 "
            f"{fp32_v.accuracy:.2%}, int8 {int8_v.accuracy:.2%} (drop {int8_v.accuracy_drop_pt:.2f} pt, "
            f"{int8_v.agreement_with_fp32:.2%} same predictions)")

        tokenizer = load_tokenizer(model_dir)
        names = [t.name for t in IOSpec.load(result.out_dir).inputs]
        texts = dataset.texts("test")
        feeds_b32 = encode(tokenizer, texts[:BATCH], None, names, SEQ, padding="max_length")
        feeds_b1 = {k: v[:1] for k, v in feeds_b32.items()}

        from transferkit.export.quantize import quantize_onnx

        vnni_path = quantize_onnx(result.out_dir / "model.onnx", work / "vnni.int8.onnx", mode="dynamic",
                                  reduce_range=False)
        vnni_accuracy = accuracy_of(vnni_path, tokenizer, dataset, names, result.max_length)
        emulated = {name: emulated_change(path, tokenizer, texts[:EMULATED_ROWS], names, result.max_length)
                    for name, path in (("portable", result.out_dir / "model.int8.onnx"), ("vnni", vnni_path))}
        rows = [torch_row(model_dir),
                ort_row("ORT fp32 (ours)", result.out_dir / "model.onnx"),
                ort_row("int8 (ours)", result.out_dir / "model.int8.onnx", "portable recipe (default)"),
                ort_row("int8 vnni recipe", vnni_path, "--cpu-isa vnni: 8-bit weights")]
        python = optimum_python(cache)
        optimum_path = optimum_int8(python, model_dir, work / "optimum") if python else None
        optimum_accuracy = None
        if optimum_path is not None:
            rows.append(ort_row("Optimum int8", optimum_path, "optimum-onnx 0.1.0, transformers 4.57.6"))
            optimum_accuracy = accuracy_of(optimum_path, tokenizer, dataset, names, result.max_length)
        say("building explanation rows (graphs we do not ship)...")
        rows.append(ort_row("int8, naive SDPA export", naive_int8(model_dir, feeds_b1, work), "not shipped"))
        rows.append(ort_row("int8, ORT transformer fusion", fused_int8(model_dir, feeds_b1, work), "not shipped"))
        rows.append(ort_row("int8 (ours) without padding trim",
                            without_padding_trim(result.out_dir / "model.int8.onnx", work / "untrimmed.int8.onnx"),
                            "not shipped: all 128 columns"))

        for row in rows:  # warm-up
            row.run(feeds_b32)
            row.run(feeds_b1)
        say(f"timing {len(rows)} rows: {ROUNDS} interleaved rounds x ({B32_RUNS} batch-{BATCH} + {B1_RUNS} "
            f"batch-1 runs), seq {SEQ}, {THREADS} threads...")
        for _ in range(ROUNDS):
            for row in rows:
                row.time_round(feeds_b1, feeds_b32)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by_name = {row.name: row for row in rows}
    ours, pytorch = by_name["int8 (ours)"], by_name["PyTorch eager fp32"]
    fp32_ort, vnni = by_name["ORT fp32 (ours)"], by_name["int8 vnni recipe"]
    optimum = by_name.get("Optimum int8")
    say("")
    say(f"{'row':32s} {'b=1 p50 ms':>11s} {'b=1 p95 ms':>11s} {'b=32 seq/s':>11s} {'vs PyTorch':>11s}  note")
    for row in rows:
        say(f"{row.name:32s} {row.latency(50):11.2f} {row.latency(95):11.2f} {row.throughput:11.1f} "
            f"{row.throughput / pytorch.throughput:10.2f}x  {row.note}")
    say("")
    sizes = {"fp32": fp32_v.size_bytes / 1e6, "int8": int8_v.size_bytes / 1e6}
    say(f"sizes: fp32 {sizes['fp32']:.1f} MB, int8 {sizes['int8']:.1f} MB; test accuracy fp32 {fp32_v.accuracy:.2%}, "
        f"int8 {int8_v.accuracy:.2%}" + (f", Optimum int8 {optimum_accuracy:.2%}" if optimum_accuracy else ""))
    summary = {
        "int8_vs_optimum": round(ours.throughput / optimum.throughput, 3) if optimum else None,
        "int8_vs_pytorch": round(ours.throughput / pytorch.throughput, 3),
        "int8_vs_fp32_ort": round(ours.throughput / fp32_ort.throughput, 3),
        "int8_vnni_vs_fp32_ort": round(vnni.throughput / fp32_ort.throughput, 3),
        "int8_vnni_accuracy_drop_pt": round(100 * (fp32_v.accuracy - vnni_accuracy), 3),
        "int8_changed_on_emulated_avx2": emulated["portable"],
        "int8_vnni_changed_on_emulated_avx2": emulated["vnni"],
        "emulated_rows": EMULATED_ROWS,
        "int8_accuracy_drop_pt": round(int8_v.accuracy_drop_pt, 3),
        "int8_b1_p50_ms": round(ours.latency(50), 3),
        "int8_b1_p50_vs_optimum": round(optimum.latency(50) / ours.latency(50), 3) if optimum else None,
        "int8_untrimmed_vs_pytorch": round(by_name["int8 (ours) without padding trim"].throughput
                                           / pytorch.throughput, 3),
        "throughput_seq_per_s": {row.name: round(row.throughput, 2) for row in rows},
        "fp32_accuracy": fp32_v.accuracy, "int8_accuracy": int8_v.accuracy, "optimum_int8_accuracy": optimum_accuracy,
        "model": model_note, "threads": THREADS, "seq": SEQ, "quick": QUICK, **benchmark_host(),
    }
    say(f"int8 recipes on {summary['cpu_model']} ({summary['cpu_int8_isa']}): portable drop "
        f"{summary['int8_accuracy_drop_pt']} pt, {summary['int8_vs_fp32_ort']}x fp32 ORT, changed on emulated AVX2 "
        f"{emulated['portable']}; vnni drop {summary['int8_vnni_accuracy_drop_pt']} pt, "
        f"{summary['int8_vnni_vs_fp32_ort']}x fp32 ORT, changed on emulated AVX2 {emulated['vnni']}")
    say(f"int8 throughput: {summary['int8_vs_pytorch']}x PyTorch (goal >= 2.5), "
        f"{summary['int8_vs_optimum']}x Optimum (goal >= 1.0); accuracy drop {summary['int8_accuracy_drop_pt']} pt "
        "(goal <= 0.5)")
    print(json.dumps(summary), flush=True)


def emulated_change(path: Path, tokenizer: Any, texts: list[str], names: list[str], max_length: int) -> float | None:
    """Fraction of ``texts`` whose prediction changes on an emulated AVX2-only CPU (None without qemu-user)."""
    from transferkit.export.emulation import emulation_available, run_on_emulated_cpu
    from transferkit.export.runtime import encode, ort_session

    if not emulation_available():
        return None
    batches = [encode(tokenizer, texts[i : i + 32], None, names, max_length) for i in range(0, len(texts), 32)]
    session = ort_session(path, THREADS)
    native = np.concatenate([session.run(["logits"], b)[0] for b in batches]).argmax(1)
    emulated = run_on_emulated_cpu(path, batches, timeout_s=3600).argmax(1)
    return round(float(np.mean(native != emulated)), 4)


def accuracy_of(path: Path, tokenizer: Any, dataset: Any, names: list[str], max_length: int) -> float:
    from transferkit.export.runtime import ort_session, predict_logits

    logits = predict_logits(ort_session(path, THREADS), tokenizer, dataset.texts("test"), None, names, max_length, 64)
    return float(np.mean(logits.argmax(axis=1) == np.asarray(dataset.label_ids("test"))))


if __name__ == "__main__":
    main()
