"""Markdown/HTML report of an export: parity, accuracy gate, sizes and speed per variant."""

from __future__ import annotations

from pathlib import Path

from transferkit.export.config import ExportConfig, ExportResult, VariantPlan, variant_plan
from transferkit.reporting import Report
from transferkit.tasks import get_task


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _chart(result: ExportResult, batch: int, unit: str) -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.variants)
    colors = ["#1a7f37" if result.variants[n].kept else "#cf222e" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = (
        ("Size (MB)", [result.variants[n].size_bytes / 1e6 for n in names]),
        ("Test accuracy (%)", [100 * (result.variants[n].accuracy or 0.0) for n in names]),
        (f"Throughput b={batch} ({unit}/s)", [result.variants[n].throughput_seq_per_s or 0.0 for n in names]),
    )
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle("Variants (green: kept by the accuracy gate, red: dropped)", fontsize=10)
    fig.tight_layout()
    return fig


def build_report(result: ExportResult, config: ExportConfig, model_path: Path, providers: list[str],
                 plan: VariantPlan | None = None, speed_note: str | None = None, item_unit: str = "seq") -> Report:
    """Build the export report (written by the caller with ``Report.write``).

    Args:
        result: The export result.
        config: The step configuration.
        model_path: Exported model directory.
        providers: Execution providers the quantized variants were measured with.
        plan: Variants and recommendation order (default: the text plan of the target).
        speed_note: How the speed inputs were built (default: padded to ``max_length`` tokens).
        item_unit: Unit of the throughput column (``seq`` or ``img``).

    """
    task = get_task(result.task)
    plan = plan or variant_plan(result.task, result.target, config.gpu_prefer)
    speed_note = speed_note or f"inputs padded to {result.max_length} tokens"
    report = Report("ONNX export and quantization")
    verdict = "passed" if result.passed else f"a variant was dropped; fell back to {result.recommended_variant}"
    report.paragraph(
        f"{task.describe_model(model_path)} exported for target {result.target}: recommended "
        f"variant {result.recommended_variant} ({result.recommended_file}). Accuracy gate: {verdict}.",
        css_class="pass" if result.passed else "fail",
    )
    report.heading("Parity gate (PyTorch fp32 vs ONNX Runtime)")
    task.report_parity(report, result, config)
    report.heading("Accuracy gate and speed per variant")
    comparison = [name for name in plan.build if name not in plan.candidates]
    extra = (f" Measured for comparison only, never recommended for this task and target: {', '.join(comparison)}."
             if comparison else "")
    report.paragraph(
        f"Test-split accuracy; a quantized variant is kept when it loses at most {config.max_drop:g} points "
        f"(on_drop={config.on_drop}). Recommendation order: {' > '.join(plan.preferences)}.{extra} Speed measured "
        f"in-process with ONNX Runtime ({', '.join(providers)} for quantized variants), {result.threads} threads, "
        f"{speed_note}: batch-1 latency over {config.latency_runs} runs, batch-{config.throughput_batch_size} "
        f"throughput (median of {config.throughput_runs} runs). The machine may be shared: compare variants within "
        "this report only."
    )
    rows = []
    for name, v in result.variants.items():
        rows.append([
            name, v.file, f"{v.size_bytes / 1e6:.1f}", _fmt(v.accuracy, "{:.2%}"), _fmt(v.accuracy_drop_pt, "{:.2f}"),
            _fmt(v.agreement_with_fp32, "{:.2%}"), _fmt(v.latency_b1_p50_ms, "{:.2f}"),
            _fmt(v.latency_b1_p95_ms, "{:.2f}"), _fmt(v.throughput_seq_per_s, "{:.1f}"),
            "kept" if v.kept else "dropped", v.reason,
        ])
    report.table(
        ["variant", "file", "size MB", "accuracy", "drop pt", "agrees w/ fp32", "b1 p50 ms", "b1 p95 ms",
         f"{item_unit}/s", "gate", "reason"],
        rows,
    )
    report.figure("variants.png", _chart(result, config.throughput_batch_size, item_unit),
                  "Size, accuracy and throughput per variant")
    _cpu_section(report, result)
    if result.graph_rewrites:
        report.heading("Graph rewrites")
        report.paragraph(
            "residual_add_as_sum: residual Add -> LayerNormalization pairs written as Sum so ONNX Runtime's CPU "
            "session optimizer does not fuse them into SkipLayerNormalization, whose CPU kernel is slower than "
            f"Add + LayerNormalization (measured). Rewritten nodes: {result.graph_rewrites}."
        )
    report.heading("Outputs")
    assets = ", ".join(("labels.json", *task.export_assets))
    report.paragraph(
        f"{result.out_dir}: {', '.join(v.file for v in result.variants.values() if v.kept)}, io_spec.json, "
        f"{assets}, metrics.json, report.md, report.html."
    )
    return report


def _cpu_section(report: Report, result: ExportResult) -> None:
    """Where the gates ran and which serving nodes the int8 graph's measured accuracy holds on."""
    cpu, recipe = result.cpu, result.int8_recipe
    if not cpu or not recipe:
        return
    report.heading("CPU and int8 recipe")
    if result.target != "cpu":
        where = ("The gpu target's static QDQ graph was evaluated unfused (quantize, dequantize, float matmul): "
                 "the int8 numerics an exact engine such as TensorRT computes, whatever this CPU's int8 kernels.")
    elif recipe["name"] == "portable":
        where = ("Recipe portable: 7-bit weights, so ONNX Runtime's uint8 x int8 kernels cannot saturate on any "
                 "x86-64 or ARM CPU; the accuracy measured here holds on every serving node.")
    else:
        labels = " or ".join(recipe["serving_node_labels"]) or "an int8 dot-product instruction set"
        where = (f"Recipe vnni (cpu_isa={recipe['requested']}): 8-bit weights, exact only on CPUs with VNNI/AMX; "
                 f"serve it on nodes labelled {labels} (Helm: cpuFeatures.requireVNNI). On AVX2-only CPUs its "
                 "int8 kernels saturate and accuracy can drop by many points.")
        if not recipe["gate_is_representative"]:
            where += " This export node has no VNNI: the gate measured saturating kernels, not the serving nodes'."
    report.paragraph(
        f"Gates ran on {cpu['model']} ({cpu['arch']}, best int8 instruction set {cpu['int8_isa']}). {where} "
        f"The deploy step sends {result.agreement_sample_size} validation inputs (agreement_sample.json) through "
        "the served model and rolls back when too few get the fp32 graph's label."
    )
