"""The export step: ONNX export with a parity gate, then quantization with an accuracy gate.

``export_model(config)`` writes an export directory (layout in :mod:`transferkit.export.io_spec`) plus
``metrics.json`` and ``report.md``/``report.html``, all-or-nothing. Text and image classifiers go through the
same steps; what differs (inputs, preprocessing, calibration data, graph rewrites) lives in
:mod:`transferkit.export.tasks`.
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
from transferkit.errors import ConfigError, PreparedDataError, QuantizationGateError
from transferkit.export.config import (
    ExportConfig,
    ExportResult,
    VariantPlan,
    VariantResult,
    variant_plan,
)
from transferkit.export.generative import GENERATION_SPEC_FILE
from transferkit.export.int8 import Int8Recipe, choose_int8_recipe
from transferkit.export.io_spec import (
    AGREEMENT_SAMPLE_FILE,
    IO_SPEC_FILE,
    VARIANT_FILES,
    IOSpec,
    TensorSpec,
    VariantSpec,
)
from transferkit.export.onnx_export import OUTPUT_NAME
from transferkit.export.quantize import quantize_onnx
from transferkit.export.runtime import measure_speed, ort_session, select_providers
from transferkit.export.tasks import ImageTask, TextTask, load_task
from transferkit.hardware import CpuInfo, detect_cpu
from transferkit.io import atomic_output_dir, check_replaceable, write_json
from transferkit.tasks import DEFAULT_TASK, get_task

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


def _check_data(dataset: PreparedDataset, plan: VariantPlan) -> None:
    """Fail before any work when a split the step needs is empty."""
    needed = {"validation": "the parity gate", "test": "the accuracy gate"}
    if "qdq" in plan.build:
        needed["train"] = "static QDQ calibration (calibration split)"
    for split, purpose in needed.items():
        if dataset.table(split).num_rows == 0:
            raise PreparedDataError(f"{dataset.path / (split + '.parquet')}: no rows; {purpose} needs examples")


def _preferences(config: ExportConfig, task: str = DEFAULT_TASK) -> list[str]:
    """Recommendation order of the variants for ``task`` on the configured target (fp32 last)."""
    return list(variant_plan(task, config.target, config.gpu_prefer).preferences)


def _providers(name: str, target: str) -> list[str]:
    """Execution providers a variant is meant for; static QDQ built for the cpu target runs on CPU kernels."""
    if name == "qdq" and target == "cpu":
        return ["CPUExecutionProvider"]
    return list(PROVIDERS[name])


def _accuracy(labels: np.ndarray, logits: np.ndarray, num_labels: int) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predictions = logits.argmax(axis=1)
    return (float(accuracy_score(labels, predictions)),
            float(f1_score(labels, predictions, average="macro", labels=list(range(num_labels)), zero_division=0)))


def export_model(config: ExportConfig) -> ExportResult:
    """Export a fine-tuned text or image classifier to ONNX, gate parity, quantize for the target, gate accuracy.

    The dataset's task (:mod:`transferkit.tasks`) supplies the graph inputs, parity and accuracy rows and the
    variants: image models get a ``pixel_values`` float32 ``[-1, 3, S, S]`` input; on cpu their int8 variant
    is static QDQ calibrated on training images, and dynamic int8 is built and measured for comparison.

    Args:
        config: Validated step configuration.

    Returns:
        The result with paths in ``config.out_dir``.

    Raises:
        ModelError: Model without weights or tokenizer, not loadable, or not for the dataset's task.
        ConfigError: An image model without usable preprocessing settings, or adapter_variant for a classifier.
        PreparedDataError: Dataset missing, or an empty validation/test/calibration split.
        DataError: An image of the dataset does not decode.
        ExportError: Unsupported architecture, exporter or quantizer failure, mismatching labels.
        ParityError: ONNX Runtime differs from PyTorch beyond ``atol`` or disagrees on a label.
        QuantizationGateError: A variant lost more than ``max_drop`` points with ``on_drop='fail'``.

    """
    started = time.perf_counter()
    # An earlier export of either kind may be replaced; a folder of the user's own files never is.
    check_replaceable(config.out_dir, (IO_SPEC_FILE, GENERATION_SPEC_FILE))
    dataset = load_prepared(config.data_dir)
    own = get_task(dataset.task).export(config, dataset)
    if own is not None:
        return own
    if config.adapter_variant:
        raise ConfigError(f"adapter_variant: applies to LoRA-trained generative models (summarization, instruction); "
                          f"{config.data_dir} is a {dataset.task} dataset")
    plan = variant_plan(dataset.task, config.target, config.gpu_prefer)
    _check_data(dataset, plan)
    threads = config.resolved_threads
    cpu = detect_cpu()
    recipe = choose_int8_recipe(config.cpu_isa, cpu)
    with _torch_threads(threads):
        task = load_task(config, dataset)
        logger.info("Exporting %s (%s) for target %s with %d threads on %s (int8: %s); int8 recipe %s",
                    task.model_path, task.describe(), config.target, threads, cpu.model, cpu.int8_isa, recipe.name)
        with atomic_output_dir(config.out_dir, owned_files=(IO_SPEC_FILE,)) as tmp:
            result = _export_into(tmp, config, task, plan, threads, started, cpu, recipe)
    return result


Task = TextTask | ImageTask


def _variant_options(name: str, config: ExportConfig, task: Task, recipe: Int8Recipe) -> dict[str, Any]:
    """``quantize_onnx`` options of one variant: calibration and layout of static QDQ, the CPU int8 recipe."""
    options: dict[str, Any] = {}
    if name == "qdq":
        options = {"calibration": task.calibration_feeds(), **task.qdq_options(config.target)}
    if name in ("int8", "qdq") and config.target == "cpu":
        options["reduce_range"] = recipe.reduce_range
    return options


def _variant_session(name: str, path: Path, config: ExportConfig, threads: int, providers: list[str]) -> Any:
    """Session of a built variant, as the accuracy gate should see it.

    GPU-target QDQ on CPU runs unfused: int8 numerics as TensorRT computes them, not this CPU's int8 kernels
    (which saturate without VNNI), so the gate does not depend on the export node.
    """
    emulate = name == "qdq" and config.target == "gpu" and providers == ["CPUExecutionProvider"]
    return ort_session(path, threads, providers, optimize=not emulate)


def _export_into(tmp: Path, config: ExportConfig, task: Task, plan: VariantPlan, threads: int,
                 started: float, cpu: CpuInfo, recipe: Int8Recipe) -> ExportResult:
    fp32_path = tmp / VARIANT_FILES["fp32"]
    t0 = time.perf_counter()
    rewrites = task.export(fp32_path, config.opset, config.target)
    export_seconds = time.perf_counter() - t0
    logger.info("Exported %s (%.1f MB) in %.1f s; graph rewrites %s", fp32_path.name,
                fp32_path.stat().st_size / 1e6, export_seconds, rewrites)

    providers = select_providers(config.target)
    # fp32 is the reference: always on CPU, where it is compared with PyTorch.
    sessions: dict[str, Any] = {"fp32": ort_session(fp32_path, threads, ["CPUExecutionProvider"])}
    cases = task.parity(sessions["fp32"], config.atol)

    variants: dict[str, VariantResult] = {
        "fp32": VariantResult("fp32", fp32_path.name, PRECISIONS["fp32"], fp32_path.stat().st_size,
                              seconds_to_build=round(export_seconds, 3)),
    }
    for name in plan.build:
        t0 = time.perf_counter()
        path = quantize_onnx(fp32_path, tmp / VARIANT_FILES[name], mode=MODES[name],
                             calibration_method=config.calibration_method, verify=False,
                             **_variant_options(name, config, task, recipe))
        variants[name] = VariantResult(name, path.name, PRECISIONS[name], path.stat().st_size,
                                       seconds_to_build=round(time.perf_counter() - t0, 3))
        sessions[name] = _variant_session(name, path, config, threads, providers)

    _accuracy_gate(sessions, config, task, plan, variants)
    sample = task.agreement_sample({name: sessions[name] for name in variants if variants[name].kept},
                                   config.agreement_sample_size)
    write_json(tmp / AGREEMENT_SAMPLE_FILE, sample)
    recommended = next(name for name in plan.preferences if name in variants and variants[name].kept)
    _measure(sessions, config, task, variants)
    sessions.clear()
    for variant in variants.values():
        if not variant.kept:
            (tmp / variant.file).unlink(missing_ok=True)

    assets = task.write_assets(tmp)
    write_json(tmp / "labels.json", task.labels)
    spec = _io_spec(config, task, variants, recommended, assets)
    spec.export_cpu, spec.int8_recipe = cpu.to_dict(), recipe.to_dict()
    spec.save(tmp)
    _monitor_baseline(tmp, config, threads)

    out = config.out_dir.absolute()
    result = ExportResult(
        out_dir=out, target=config.target, recommended_variant=recommended,
        recommended_file=variants[recommended].file,
        parity_max_abs_diff=max(c.max_abs_diff for c in cases), parity_cases=cases, variants=variants,
        passed=all(variants[v].kept for v in plan.candidates), fallback=recommended != plan.preferences[0],
        labels=task.labels, max_length=task.max_length, opset=config.opset, threads=threads,
        io_spec_path=out / IO_SPEC_FILE, metrics_path=out / METRICS_FILE, report_md=out / "report.md",
        report_html=out / "report.html", graph_rewrites=rewrites, task=task.task, input_shape=task.input_shape,
        cpu=cpu.to_dict(), int8_recipe=recipe.to_dict(), agreement_sample_size=len(sample["labels"]),
    )
    from transferkit.export.report import build_report

    result.seconds = round(time.perf_counter() - started, 3)
    build_report(result, config, task.model_path, providers, plan, task.speed_note(), task.item_unit).write(
        tmp, stem="report")
    write_json(tmp / METRICS_FILE, result.to_dict())
    _make_readable(tmp)
    logger.info("Export done in %.1f s: recommended %s (%s)", result.seconds, recommended, result.recommended_file)
    return result


def _monitor_baseline(tmp: Path, config: ExportConfig, threads: int) -> None:
    """Write ``monitor_baseline/``: what the served graph sees on validation rows (drift monitoring)."""
    if config.monitor_baseline_size == 0:
        return
    from transferkit.errors import MonitorError
    from transferkit.monitor.baseline import BASELINE_DIR, compute_baseline

    try:
        baseline = compute_baseline(tmp, config.data_dir, size=config.monitor_baseline_size, threads=threads)
    except MonitorError as exc:  # a task without monitoring exports as before; the monitor refuses to start
        logger.warning("No monitoring baseline: %s", exc)
        return
    baseline.save(tmp / BASELINE_DIR)


def _make_readable(directory: Path) -> None:
    """Model artifacts are read by other users (Triton, KFP executors): 0755 directories, 0644 files."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _accuracy_gate(sessions: dict[str, Any], config: ExportConfig, task: Task, plan: VariantPlan,
                   variants: dict[str, VariantResult]) -> None:
    """Evaluate every variant on the test split; mark variants that lose more than ``max_drop`` points.

    Raises:
        QuantizationGateError: A variant that can be recommended failed and ``on_drop`` is ``fail``.

    """
    labels = task.test_labels()
    num_labels = len(task.labels)
    reference: np.ndarray | None = None
    for name, variant in variants.items():
        logits = task.test_logits(sessions[name])
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
        candidate = name in plan.candidates
        if not candidate:
            variant.reason += "; measured for comparison, never recommended for this task and target"
        logger.info("Accuracy gate %s: %.4f vs fp32 %.4f (%s) -> %s", name, variant.accuracy, fp32_accuracy,
                    variant.reason, "kept" if variant.kept else "dropped")
        if not variant.kept and candidate and config.on_drop == "fail":
            raise QuantizationGateError(
                f"accuracy gate: {name} accuracy {variant.accuracy:.2%} on {len(labels)} test rows is "
                f"{variant.accuracy_drop_pt:.2f} points below fp32 {fp32_accuracy:.2%} (max_drop {config.max_drop:g}"
                f"{'' if finite else ', non-finite logits'}); use on_drop=fallback to ship the next variant"
            )


def _measure(sessions: dict[str, Any], config: ExportConfig, task: Task, variants: dict[str, VariantResult]) -> None:
    """In-process latency (batch 1) and throughput (batch N) on the task's speed inputs."""
    if not (config.latency_runs or config.throughput_runs):
        return
    feeds_b1, feeds_bn = task.speed_feeds()
    for name, variant in variants.items():
        speed = measure_speed(sessions[name], feeds_b1, feeds_bn, config.latency_runs, config.throughput_runs)
        variant.latency_b1_p50_ms = speed["latency_b1_p50_ms"]
        variant.latency_b1_p95_ms = speed["latency_b1_p95_ms"]
        variant.throughput_seq_per_s = speed["throughput_seq_per_s"]


def _io_spec(config: ExportConfig, task: Task, variants: dict[str, VariantResult], recommended: str,
             assets: dict[str, Any]) -> IOSpec:
    kept = {name: v for name, v in variants.items() if v.kept}
    return IOSpec(
        task=task.task,
        model_type=task.model_type,
        inputs=task.inputs(),
        outputs=[TensorSpec(OUTPUT_NAME, "float32", [-1, len(task.labels)])],
        labels=task.labels,
        max_length=assets["max_length"],
        opset=config.opset,
        variants={
            name: VariantSpec(v.file, v.precision, v.size_bytes, primary_metric=v.accuracy,
                              primary_metric_drop_pt=v.accuracy_drop_pt, providers=_providers(name, config.target))
            for name, v in kept.items()
        },
        recommended_variant=recommended,
        tokenizer_dir=assets["tokenizer_dir"],
        tokenizer_files=assets["tokenizer_files"],
        preprocessing=assets["preprocessing"],
        text_inputs=assets.get("text_inputs") or {},
        target=config.target,
        primary_metric_name="accuracy",
    )
