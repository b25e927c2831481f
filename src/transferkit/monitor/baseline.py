"""The reference statistics stored with every export: what the served model saw on held-out data.

``monitor_baseline/`` in the export directory holds ``baseline.npz`` (pooled embeddings of a seeded sample,
predicted class ids, confidences and one array per input feature) and ``baseline.json`` (labels, the graph
variant and head tensor the embeddings come from, the split, the predicted-class distribution, a confidence
histogram and feature summaries). It is computed with the recommended (served) graph variant and the served
preprocessing, so served traffic and the baseline are comparable number for number.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import MonitorError
from transferkit.io import atomic_output_dir, write_json
from transferkit.monitor.graph import EMBEDDING_OUTPUT, with_embedding_output

logger = logging.getLogger(__name__)

BASELINE_DIR = "monitor_baseline"
BASELINE_FORMAT = 1
CONFIDENCE_BINS = 10


@dataclass
class Baseline:
    """Reference sample of one exported model (see the module docstring)."""

    labels: list[str]
    embeddings: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    features: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.predictions)
        sizes = {"embeddings": len(self.embeddings), "confidences": len(self.confidences),
                 **{name: len(v) for name, v in self.features.items()}}
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise MonitorError(f"baseline: {wrong} rows, expected {n} like predictions")
        if n < 10:
            raise MonitorError(f"baseline: {n} rows; expected at least 10")

    @property
    def embedding_dim(self) -> int:
        """Width of the pooled embedding."""
        return int(self.embeddings.shape[1])

    def summary(self) -> dict[str, Any]:
        """``baseline.json`` content: distributions a person (or Grafana) can read."""
        counts = np.bincount(self.predictions, minlength=len(self.labels))
        hist, edges = np.histogram(self.confidences, bins=CONFIDENCE_BINS, range=(0.0, 1.0))
        return {
            "format_version": BASELINE_FORMAT, "labels": self.labels, "size": len(self.predictions),
            "embedding_dim": self.embedding_dim,
            "prediction_distribution": {lab: float(c) / len(self.predictions) for lab, c in zip(self.labels, counts,
                                                                                               strict=True)},
            "confidence_histogram": {"edges": edges.round(3).tolist(), "counts": hist.tolist()},
            "mean_confidence": float(self.confidences.mean()),
            "features": {name: {"mean": float(v.mean()), "p50": float(np.median(v)), "p95": float(np.quantile(v, .95))}
                         for name, v in self.features.items()},
            **self.meta,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``baseline.npz`` and ``baseline.json`` into ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"embeddings": self.embeddings.astype(np.float32), "predictions": self.predictions.astype(np.int64),
                  "confidences": self.confidences.astype(np.float32),
                  **{f"feature_{k}": v.astype(np.float64) for k, v in self.features.items()}}
        tmp = directory / ".baseline.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(directory / "baseline.npz")
        write_json(directory / "baseline.json", self.summary())
        return directory


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline from its folder or from the export directory holding ``monitor_baseline/``.

    Raises:
        MonitorError: Missing or malformed files.
    """
    path = Path(path)
    if (path / BASELINE_DIR).is_dir():
        path = path / BASELINE_DIR
    try:
        summary = json.loads((path / "baseline.json").read_text(encoding="utf-8"))
        with np.load(path / "baseline.npz") as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise MonitorError(f"{path}: expected a monitoring baseline (baseline.json + baseline.npz): {exc}") from exc
    missing = [k for k in ("embeddings", "predictions", "confidences") if k not in arrays]
    if missing or "labels" not in summary:
        raise MonitorError(f"{path / 'baseline.npz'}: missing {missing or ['labels']}")
    if summary.get("format_version") != BASELINE_FORMAT:
        raise MonitorError(f"{path / 'baseline.json'}: format_version {summary.get('format_version')!r}, "
                           f"expected {BASELINE_FORMAT}")
    features = {k.removeprefix("feature_"): v for k, v in arrays.items() if k.startswith("feature_")}
    meta = {k: summary[k] for k in ("task", "variant", "graph_file", "head_tensor", "split", "export_dir")
            if k in summary}
    return Baseline(list(summary["labels"]), arrays["embeddings"], arrays["predictions"], arrays["confidences"],
                    features, meta)


class ServedGraph:
    """The served graph variant with its head input exposed, run with ONNX Runtime on the served preprocessing.

    Args:
        export_dir: An export directory (``io_spec.json``, graph variants, tokenizer or preprocessor).
        variant: Graph variant (default: the recommended one, which is what gets deployed).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, export_dir: str | Path, variant: str | None = None, threads: int = 2) -> None:
        import onnxruntime as ort

        from transferkit.export.io_spec import IOSpec
        from transferkit.tasks import get_task

        self.export_dir = Path(export_dir)
        self.spec = IOSpec.load(self.export_dir)
        self.variant = variant or self.spec.recommended_variant
        if self.variant not in self.spec.variants:
            raise MonitorError(f"variant: {self.variant!r} not among {sorted(self.spec.variants)} in {export_dir}")
        self.task = get_task(self.spec.task)
        self.inputs = self.task.monitor_inputs(self.export_dir)
        graph_file = self.export_dir / self.spec.variants[self.variant].file
        graph, self.head_tensor = with_embedding_output(graph_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
        self.logits_name = self.spec.outputs[0].name
        self.graph_file = graph_file.name

    def run(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """Embeddings, predicted class ids, confidences (top softmax probability) and input features of ``items``."""
        parts: dict[str, list[np.ndarray]] = {}
        for feed, features in self.inputs.batches(items):
            logits, embeddings = self.session.run([self.logits_name, EMBEDDING_OUTPUT], feed)
            logits = logits.astype(np.float64)
            probabilities = np.exp(logits - logits.max(1, keepdims=True))
            probabilities /= probabilities.sum(1, keepdims=True)
            batch = {"embeddings": embeddings.reshape(len(logits), -1).astype(np.float32),
                     "predictions": probabilities.argmax(1), "confidences": probabilities.max(1), **features}
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
        if not parts:
            raise MonitorError("no inputs to run")
        return {k: np.concatenate(v) for k, v in parts.items()}


def compute_baseline(export_dir: str | Path, data_dir: str | Path, split: str = "validation", size: int = 500,
                     seed: int = 0, threads: int = 2, variant: str | None = None) -> Baseline:
    """Run the served graph on a seeded sample of ``split`` and keep what the monitor compares against.

    Raises:
        MonitorError: The export has no recognisable head, or the task has no monitoring.
        PreparedDataError: The split is missing or empty.
    """
    from transferkit.data.prepared import load_prepared
    from transferkit.errors import PreparedDataError

    graph = ServedGraph(export_dir, variant, threads)
    dataset = load_prepared(data_dir)
    items = graph.task.monitor_items(dataset, split)
    if not items:
        raise PreparedDataError(f"{data_dir}: split {split!r} is empty; the monitoring baseline needs rows")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(items), min(size, len(items)), replace=False))
    outputs = graph.run([items[i] for i in chosen])
    logger.info("Monitoring baseline: %d %s rows of %s through %s (head input %s, %d dims)", len(chosen), split,
                data_dir, graph.graph_file, graph.head_tensor, outputs["embeddings"].shape[1])
    meta = {"task": graph.spec.task, "variant": graph.variant, "graph_file": graph.graph_file,
            "head_tensor": graph.head_tensor, "split": split}
    return Baseline(list(graph.spec.labels), outputs["embeddings"], outputs["predictions"], outputs["confidences"],
                    {name: outputs[name] for name in graph.inputs.features}, meta)


def write_baseline(export_dir: str | Path, data_dir: str | Path, **kwargs: Any) -> Path:
    """Compute the baseline of an export and write it to ``<export_dir>/monitor_baseline/`` (all or nothing)."""
    baseline = compute_baseline(export_dir, data_dir, **kwargs)
    with atomic_output_dir(Path(export_dir) / BASELINE_DIR) as tmp:
        baseline.save(tmp)
    return Path(export_dir) / BASELINE_DIR
