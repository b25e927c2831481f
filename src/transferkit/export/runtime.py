"""ONNX Runtime sessions, tokenization to numpy feeds, batched prediction (text and images) and in-process latency."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ExportError

logger = logging.getLogger(__name__)


def select_providers(target: str) -> list[str]:
    """Execution providers for measuring a target's variants: CUDA when the target is gpu and it exists."""
    import onnxruntime as ort

    if target == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(path: str | Path, threads: int, providers: Sequence[str] | None = None, *,
                optimize: bool = True) -> Any:
    """Open an inference session with full graph optimizations, as a server would run it.

    Args:
        path: ONNX file.
        threads: Intra-op threads.
        providers: Execution providers (default CPU).
        optimize: False runs the graph as written: a QDQ graph then computes int8 numerics in float
            (quantize, dequantize, float matmul) instead of fusing into the CPU's int8 kernels, i.e. what an
            exact int8 engine (TensorRT) computes, independent of this CPU's instruction set.

    Raises:
        ExportError: The graph does not load.

    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{path}: ONNX Runtime cannot load the graph ({first})") from exc


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    input_names: Sequence[str],
    max_length: int,
    padding: str | bool = "longest",
) -> dict[str, np.ndarray]:
    """Tokenize to int64 numpy arrays holding only the graph's inputs."""
    encoded = tokenizer(
        list(texts), list(pairs) if pairs is not None else None, padding=padding, truncation=True,
        max_length=max_length, return_tensors="np",
    )
    return {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in input_names}


def iter_batches(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    input_names: Sequence[str],
    max_length: int,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(row_indices, feeds)`` batches of similar token length (less padding, same results)."""
    lengths = [len(ids) for ids in tokenizer(list(texts), list(pairs) if pairs else None, truncation=True,
                                              max_length=max_length)["input_ids"]]
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch_pairs = [pairs[i] for i in rows] if pairs is not None else None
        yield rows, encode(tokenizer, [texts[i] for i in rows], batch_pairs, input_names, max_length)


def window_feeds(features: Sequence[dict[str, list[int]]], input_names: Sequence[str], pad_id: int
                 ) -> dict[str, np.ndarray]:
    """Right-padded int64 feeds of already encoded windows (``transferkit.data.long_text.encode_documents``)."""
    width = max(len(f["input_ids"]) for f in features)
    feeds = {}
    for name in input_names:
        pad = pad_id if name == "input_ids" else 0
        array = np.full((len(features), width), pad, dtype=np.int64)
        for row, feature in enumerate(features):
            array[row, : len(feature[name])] = feature[name]
        feeds[name] = array
    return feeds


def predict_document_logits(
    run: Any,
    tokenizer: Any,
    texts: Sequence[str],
    input_names: Sequence[str],
    text_inputs: Any,
    batch_size: int,
) -> np.ndarray:
    """Per-text logits under ``text_inputs`` (tail/head_tail cut, or windows aggregated per text).

    Args:
        run: ``feeds -> logits`` (an ONNX Runtime session's run, or the PyTorch model for the parity gate).
        tokenizer: The model's tokenizer.
        texts: Texts.
        input_names: Graph inputs.
        text_inputs: :class:`transferkit.data.long_text.TextInputs`.
        batch_size: Windows per call.
    """
    from transferkit.data.long_text import aggregate, encode_documents

    features, doc_index = encode_documents(tokenizer, texts, text_inputs)
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    window_logits: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out = np.asarray(run(window_feeds([features[i] for i in rows], input_names, int(tokenizer.pad_token_id))),
                         dtype=np.float32)
        if window_logits is None:
            window_logits = np.empty((len(features), out.shape[1]), dtype=np.float32)
        window_logits[rows] = out
    if window_logits is None:
        raise ExportError("evaluation: no texts to predict")
    return aggregate(window_logits, doc_index, len(texts), text_inputs.aggregation).astype(np.float32)


def predict_logits(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    input_names: Sequence[str],
    max_length: int,
    batch_size: int,
    text_inputs: Any = None,
) -> np.ndarray:
    """Logits for every text, in input order (per document under ``text_inputs`` other than head truncation)."""
    from tqdm.auto import tqdm

    if text_inputs is not None and not text_inputs.plain:
        return predict_document_logits(lambda feeds: session.run(["logits"], feeds)[0], tokenizer, texts,
                                       input_names, text_inputs, batch_size)

    logits: np.ndarray | None = None
    batches = iter_batches(tokenizer, texts, pairs, input_names, max_length, batch_size)
    total = -(-len(texts) // batch_size)
    for rows, feeds in tqdm(batches, total=total, desc="evaluate", unit="batch", leave=False, disable=None):
        out = np.asarray(session.run(["logits"], feeds)[0], dtype=np.float32)
        if logits is None:
            logits = np.empty((len(texts), out.shape[1]), dtype=np.float32)
        logits[rows] = out
    if logits is None:
        raise ExportError("evaluation: no texts to predict")
    return logits


def predict_image_logits(session: Any, pixel_values: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for preprocessed images ``[N, 3, S, S]`` (graph input ``pixel_values``), in input order."""
    if len(pixel_values) == 0:
        raise ExportError("evaluation: no images to predict")
    outputs = [
        np.asarray(session.run(["logits"], {"pixel_values": pixel_values[start : start + batch_size]})[0],
                   dtype=np.float32)
        for start in range(0, len(pixel_values), batch_size)
    ]
    return np.concatenate(outputs, axis=0)


def measure_speed(
    session: Any,
    feeds_b1: dict[str, np.ndarray],
    feeds_bn: dict[str, np.ndarray],
    latency_runs: int,
    throughput_runs: int,
) -> dict[str, float | None]:
    """Batch-1 latency (p50/p95, ms) and batch-N throughput (sequences or images/s, from the median run)."""
    result: dict[str, float | None] = {"latency_b1_p50_ms": None, "latency_b1_p95_ms": None,
                                       "throughput_seq_per_s": None}
    if latency_runs:
        times = _timed_runs(session, feeds_b1, latency_runs)
        result["latency_b1_p50_ms"] = round(float(np.percentile(times, 50)) * 1000, 3)
        result["latency_b1_p95_ms"] = round(float(np.percentile(times, 95)) * 1000, 3)
    if throughput_runs:
        times = _timed_runs(session, feeds_bn, throughput_runs)
        batch = next(iter(feeds_bn.values())).shape[0]
        result["throughput_seq_per_s"] = round(batch / float(np.median(times)), 2)
    return result


def _timed_runs(session: Any, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    """Wall seconds of ``runs`` session runs after one untimed warm-up run."""
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times
