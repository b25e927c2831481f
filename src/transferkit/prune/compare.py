"""Size, latency and accuracy of {fp32, int8} x {unpruned, pruned}, measured by the export step itself."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from transferkit.prune.report import Variant

logger = logging.getLogger(__name__)


def compare_variants(unpruned: Path, pruned: Path, data_dir: Path, *, latency_runs: int = 30,
                     max_eval_samples: int | None = None, threads: int | None = None) -> list[Variant]:
    """Export both models (parity gate included) and return their fp32 and int8 variants.

    Accuracy is the export step's test-split accuracy, latency its batch-1 p50 on test inputs, size the graph file.
    The exports go to a temporary directory that is removed afterwards.

    Raises:
        ParityError: A graph's outputs differ from PyTorch (for the pruned model: its slicing or config is wrong).
    """
    from transferkit.export import ExportConfig, export_model

    work = Path(tempfile.mkdtemp(prefix="tk-prune-compare-"))
    variants: list[Variant] = []
    try:
        for label, directory in (("", unpruned), ("pruned ", pruned)):
            logger.info("Exporting the %smodel for the comparison table", label or "unpruned ")
            result = export_model(ExportConfig(directory, data_dir, work / (label.strip() or "unpruned"), target="cpu",
                                               max_drop=100.0, latency_runs=latency_runs, throughput_runs=0,
                                               max_eval_samples=max_eval_samples, threads=threads,
                                               agreement_sample_size=0))
            for name in ("fp32", "int8"):
                v = result.variants.get(name)
                if v is not None and v.accuracy is not None and v.latency_b1_p50_ms is not None:
                    variants.append(Variant(label + name, v.size_bytes, v.latency_b1_p50_ms, v.accuracy))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return variants
