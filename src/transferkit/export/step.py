"""The export step: ONNX export with a parity gate, then quantization with an accuracy gate.

``export_model(config)`` writes an export directory (layout in :mod:`transferkit.export.io_spec`) plus
``metrics.json`` and ``report.md``/``report.html``, all-or-nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.prepared import PreparedDataset, load_prepared
from transferkit.errors import ExportError, PreparedDataError, QuantizationGateError
from transferkit.export.config import TARGET_VARIANTS, ExportConfig, ExportResult, VariantResult
from transferkit.export.io_spec import IO_SPEC_FILE, VARIANT_FILES, IOSpec, TensorSpec, VariantSpec
from transferkit.export.onnx_export import (
    OUTPUT_NAME,
    ExportableModel,
    export_onnx,
    keep_residual_adds_unfused,
    load_exportable,
    resolve_max_length,
    trim_trailing_padding,
)
from transferkit.export.parity import check_parity
from transferkit.export.quantize import quantize_onnx
from transferkit.export.runtime import encode, measure_speed, ort_session, predict_logits, select_providers
from transferkit.io import atomic_output_dir, write_json

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MODES = {"int8": "dynamic", "qdq": "qdq", "fp16": "fp16"}
PRECISIONS = {"fp32": "fp32", "int8": "int8", "qdq": "qdq-int8", "fp16": "fp16"}
PROVIDERS = {
    "fp32": ["CPUExecutionProvider", "CUDAExecutionProvider"],
    "int8": ["CPUExecutionProvider"],
    "qdq": ["TensorrtExecutionProvider"],
    "fp16": ["CUDAExecutionProvider", "TensorrtExecutionProvider"],
}


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_data(dataset: PreparedDataset, config: ExportConfig) -> None:
    """Fail before any work when a split the step needs is empty."""
    needed = {"validation": "the parity gate", "test": "the accuracy gate"}
    if config.target == "gpu":
        needed["train"] = "static QDQ calibration (calibration split)"
    for split, purpose in needed.items():
        if dataset.table(split).num_rows == 0:
            raise PreparedDataError(f"{dataset.path / (split + '.parquet')}: no rows; {purpose} needs examples")


def _trace_sample(exportable: ExportableModel, texts: list[str], pairs: list[str] | None, max_length: int
                  ) -> dict[str, np.ndarray]:
    """Two real rows padded to a common length, with at least one padded position, for tracing."""
    batch = [texts[i % len(texts)] for i in range(2)]
    batch_pairs = [pairs[i % len(pairs)] for i in range(2)] if pairs else None
    feeds = encode(exportable.tokenizer, batch, batch_pairs, exportable.input_names, max_length)
    if feeds["attention_mask"].all():
        longest = int(feeds["input_ids"].shape[1])
        feeds = encode(exportable.tokenizer, batch, batch_pairs, exportable.input_names,
                       min(longest + 4, max_length), padding="max_length")
    return feeds


def _preferences(config: ExportConfig) -> list[str]:
    if config.target == "cpu":
        return ["int8", "fp32"]
    first = config.gpu_prefer
    return [first, *(v for v in ("fp16", "qdq") if v != first), "fp32"]


def _calibration_feeds(exportable: ExportableModel, dataset: PreparedDataset, config: ExportConfig,
                       max_length: int) -> list[dict[str, np.ndarray]]:
    texts = dataset.texts("train")[: config.calibration_size]
    pairs = dataset.text_pairs("train")
    pairs = pairs[: config.calibration_size] if pairs is not None else None
    feeds = []
    for start in range(0, len(texts), 8):
        chunk_pairs = pairs[start : start + 8] if pairs is not None else None
        feeds.append(encode(exportable.tokenizer, texts[start : start + 8], chunk_pairs, exportable.input_names,
                            max_length))
    return feeds


def _accuracy(labels: np.ndarray, logits: np.ndarray, num_labels: int) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predictions = logits.argmax(axis=1)
    return (float(accuracy_score(labels, predictions)),
            float(f1_score(labels, predictions, average="macro", labels=list(range(num_labels)), zero_division=0)))


def _tokenizer_files(exportable: ExportableModel, directory: Path, max_length: int) -> list[str]:
    """Save the tokenizer with truncation/padding set, so ``tokenizer.json`` alone reproduces preprocessing."""
    tokenizer = exportable.tokenizer
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=max_length)
    backend.enable_padding(pad_id=int(tokenizer.pad_token_id), pad_token=str(tokenizer.pad_token),
                           direction=tokenizer.padding_side)
    try:
        tokenizer.save_pretrained(str(directory))
    finally:
        backend.no_truncation()
        backend.no_padding()
    files = sorted(p.name for p in directory.iterdir() if p.is_file())
    if "tokenizer.json" not in files:
        raise ExportError(f"{exportable.resolved.path}: the tokenizer did not save a tokenizer.json")
    return files


def export_model(config: ExportConfig) -> ExportResult:
    """Export a fine-tuned classifier to ONNX, gate parity, quantize for the target and gate accuracy.

    Args:
        config: Validated step configuration.

    Returns:
        The result with paths in ``config.out_dir``.

    Raises:
        ModelError: Model without weights or tokenizer, or not loadable.
        PreparedDataError: Dataset missing, or an empty validation/test/calibration split.
        ExportError: Unsupported architecture, exporter or quantizer failure, mismatching labels.
        ParityError: ONNX Runtime differs from PyTorch beyond ``atol`` or disagrees on a label.
        QuantizationGateError: A variant lost more than ``max_drop`` points with ``on_drop='fail'``.

    """
    started = time.perf_counter()
    dataset = load_prepared(config.data_dir)
    _check_data(dataset, config)
    threads = config.resolved_threads
    with _torch_threads(threads):
        exportable = load_exportable(config.model_dir, dataset.labels, config.data_dir,
                                     allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
        max_length = resolve_max_length(config.max_length, exportable)
        logger.info("Exporting %s (%s, inputs %s, max_length %d) for target %s with %d threads",
                    exportable.resolved.path, exportable.model_type, exportable.input_names, max_length,
                    config.target, threads)
        with atomic_output_dir(config.out_dir) as tmp:
            result = _export_into(tmp, config, dataset, exportable, max_length, threads, started)
    return result


def _export_into(tmp: Path, config: ExportConfig, dataset: PreparedDataset, exportable: ExportableModel,
                 max_length: int, threads: int, started: float) -> ExportResult:
    import onnx

    val_texts, val_pairs = dataset.texts("validation"), dataset.text_pairs("validation")
    fp32_path = tmp / VARIANT_FILES["fp32"]
    t0 = time.perf_counter()
    export_onnx(exportable, _trace_sample(exportable, val_texts, val_pairs, max_length), fp32_path, config.opset)
    graph = onnx.load(str(fp32_path))
    rewrites: dict[str, int] = {"trim_trailing_padding": int(trim_trailing_padding(graph, exportable.input_names))}
    if config.target == "cpu":
        rewrites["residual_add_as_sum"] = keep_residual_adds_unfused(graph)
    if any(rewrites.values()):
        onnx.save(graph, str(fp32_path))
    export_seconds = time.perf_counter() - t0
    logger.info("Exported %s (%.1f MB) in %.1f s; graph rewrites %s", fp32_path.name,
                fp32_path.stat().st_size / 1e6, export_seconds, rewrites)

    providers = select_providers(config.target)
    # fp32 is the reference: always on CPU, where it is compared with PyTorch.
    sessions: dict[str, Any] = {"fp32": ort_session(fp32_path, threads, ["CPUExecutionProvider"])}
    cases = check_parity(exportable.model, sessions["fp32"], exportable.tokenizer, val_texts, val_pairs,
                         exportable.input_names, max_length, config.atol)

    variants: dict[str, VariantResult] = {
        "fp32": VariantResult("fp32", fp32_path.name, PRECISIONS["fp32"], fp32_path.stat().st_size,
                              seconds_to_build=round(export_seconds, 3)),
    }
    for name in TARGET_VARIANTS[config.target]:
        calibration = _calibration_feeds(exportable, dataset, config, max_length) if name == "qdq" else None
        t0 = time.perf_counter()
        path = quantize_onnx(fp32_path, tmp / VARIANT_FILES[name], mode=MODES[name], calibration=calibration,
                             calibration_method=config.calibration_method, verify=False)
        variants[name] = VariantResult(name, path.name, PRECISIONS[name], path.stat().st_size,
                                       seconds_to_build=round(time.perf_counter() - t0, 3))
        sessions[name] = ort_session(path, threads, providers)

    _accuracy_gate(sessions, config, dataset, exportable, max_length, variants)
    preferences = _preferences(config)
    recommended = next(name for name in preferences if name in variants and variants[name].kept)
    _measure(sessions, config, exportable, val_texts, val_pairs, max_length, variants)
    sessions.clear()
    for variant in variants.values():
        if not variant.kept:
            (tmp / variant.file).unlink(missing_ok=True)

    tokenizer_dir = tmp / "tokenizer"
    tokenizer_dir.mkdir()
    tokenizer_files = _tokenizer_files(exportable, tokenizer_dir, max_length)
    write_json(tmp / "labels.json", exportable.labels)
    spec = _io_spec(config, dataset, exportable, max_length, variants, recommended, tokenizer_files)
    spec.save(tmp)

    out = config.out_dir.absolute()
    result = ExportResult(
        out_dir=out, target=config.target, recommended_variant=recommended,
        recommended_file=variants[recommended].file,
        parity_max_abs_diff=max(c.max_abs_diff for c in cases), parity_cases=cases, variants=variants,
        passed=all(variants[v].kept for v in TARGET_VARIANTS[config.target]), fallback=recommended != preferences[0],
        labels=exportable.labels, max_length=max_length, opset=config.opset, threads=threads,
        io_spec_path=out / IO_SPEC_FILE, metrics_path=out / METRICS_FILE, report_md=out / "report.md",
        report_html=out / "report.html", graph_rewrites=rewrites,
    )
    from transferkit.export.report import build_report

    result.seconds = round(time.perf_counter() - started, 3)
    build_report(result, config, exportable.resolved.path, providers).write(tmp, stem="report")
    write_json(tmp / METRICS_FILE, result.to_dict())
    _make_readable(tmp)
    logger.info("Export done in %.1f s: recommended %s (%s)", result.seconds, recommended, result.recommended_file)
    return result


def _make_readable(directory: Path) -> None:
    """Model artifacts are read by other users (Triton, KFP executors): 0755 directories, 0644 files."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _accuracy_gate(sessions: dict[str, Any], config: ExportConfig, dataset: PreparedDataset,
                   exportable: ExportableModel, max_length: int, variants: dict[str, VariantResult]) -> None:
    """Evaluate every variant on the test split; mark variants that lose more than ``max_drop`` points.

    Raises:
        QuantizationGateError: A variant failed and ``on_drop`` is ``fail``.

    """
    texts, pairs = dataset.texts("test"), dataset.text_pairs("test")
    labels = np.asarray(dataset.label_ids("test"))
    if config.max_eval_samples is not None:
        texts, labels = texts[: config.max_eval_samples], labels[: config.max_eval_samples]
        pairs = pairs[: config.max_eval_samples] if pairs is not None else None
    num_labels = len(exportable.labels)
    reference: np.ndarray | None = None
    for name, variant in variants.items():
        logits = predict_logits(sessions[name], exportable.tokenizer, texts, pairs, exportable.input_names,
                                max_length, config.eval_batch_size)
        predictions = logits.argmax(axis=1)
        variant.accuracy, variant.macro_f1 = _accuracy(labels, logits, num_labels)
        if reference is None:
            reference = predictions
            fp32_accuracy = variant.accuracy
            variant.accuracy_drop_pt, variant.agreement_with_fp32, variant.reason = 0.0, 1.0, "reference"
            continue
        variant.agreement_with_fp32 = round(float(np.mean(predictions == reference)), 6)
        variant.accuracy_drop_pt = round((fp32_accuracy - variant.accuracy) * 100, 4)
        finite = bool(np.isfinite(logits).all())
        variant.kept = finite and variant.accuracy_drop_pt <= config.max_drop + 1e-9
        if not finite:
            variant.reason = "non-finite logits on the test split"
        elif variant.kept:
            variant.reason = f"accuracy drop {variant.accuracy_drop_pt:.2f} pt <= max_drop {config.max_drop:g}"
        else:
            variant.reason = f"accuracy drop {variant.accuracy_drop_pt:.2f} pt > max_drop {config.max_drop:g}"
        logger.info("Accuracy gate %s: %.4f vs fp32 %.4f (%s) -> %s", name, variant.accuracy, fp32_accuracy,
                    variant.reason, "kept" if variant.kept else "dropped")
        if not variant.kept and config.on_drop == "fail":
            raise QuantizationGateError(
                f"accuracy gate: {name} accuracy {variant.accuracy:.2%} on {len(labels)} test rows is "
                f"{variant.accuracy_drop_pt:.2f} points below fp32 {fp32_accuracy:.2%} (max_drop {config.max_drop:g}"
                f"{'' if finite else ', non-finite logits'}); use on_drop=fallback to ship the next variant"
            )


def _measure(sessions: dict[str, Any], config: ExportConfig, exportable: ExportableModel, texts: list[str],
             pairs: list[str] | None, max_length: int, variants: dict[str, VariantResult]) -> None:
    """In-process latency (batch 1) and throughput (batch N), every input padded to ``max_length``."""
    if not (config.latency_runs or config.throughput_runs):
        return
    n = config.throughput_batch_size
    rows = [texts[i % len(texts)] for i in range(n)]
    row_pairs = [pairs[i % len(pairs)] for i in range(n)] if pairs else None
    feeds_bn = encode(exportable.tokenizer, rows, row_pairs, exportable.input_names, max_length, padding="max_length")
    feeds_b1 = {k: v[:1] for k, v in feeds_bn.items()}
    for name, variant in variants.items():
        speed = measure_speed(sessions[name], feeds_b1, feeds_bn, config.latency_runs, config.throughput_runs)
        variant.latency_b1_p50_ms = speed["latency_b1_p50_ms"]
        variant.latency_b1_p95_ms = speed["latency_b1_p95_ms"]
        variant.throughput_seq_per_s = speed["throughput_seq_per_s"]


def _io_spec(config: ExportConfig, dataset: PreparedDataset, exportable: ExportableModel, max_length: int,
             variants: dict[str, VariantResult], recommended: str, tokenizer_files: list[str]) -> IOSpec:
    tokenizer = exportable.tokenizer
    kept = {name: v for name, v in variants.items() if v.kept}
    return IOSpec(
        task=dataset.task,
        model_type=exportable.model_type,
        inputs=[TensorSpec(name, "int64", [-1, -1]) for name in exportable.input_names],
        outputs=[TensorSpec(OUTPUT_NAME, "float32", [-1, len(exportable.labels)])],
        labels=exportable.labels,
        max_length=max_length,
        opset=config.opset,
        variants={
            name: VariantSpec(v.file, v.precision, v.size_bytes, primary_metric=v.accuracy,
                              primary_metric_drop_pt=v.accuracy_drop_pt, providers=PROVIDERS[name])
            for name, v in kept.items()
        },
        recommended_variant=recommended,
        tokenizer_dir="tokenizer",
        tokenizer_files=tokenizer_files,
        preprocessing={
            "kind": "tokenizer",
            "tokenizer_class": type(tokenizer).__name__,
            "model_input_names": list(exportable.input_names),
            "truncation": True,
            "max_length": max_length,
            "padding": "longest",
            "padding_side": tokenizer.padding_side,
            "pad_token": str(tokenizer.pad_token),
            "pad_token_id": int(tokenizer.pad_token_id),
            "text_pair": dataset.has_text_pair,
            "postprocessing": "softmax(logits) for probabilities; argmax indexes labels",
        },
        target=config.target,
        primary_metric_name="accuracy",
    )

