"""`transferkit export`: ONNX export with a parity gate, quantization with an accuracy gate."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


@handle_errors
def export(
    model: str = typer.Option(..., "--model",
                              help="Text or image model directory from `transferkit train` (or a catalog name)."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory (validation: parity, test: accuracy)."),
    out: Path = typer.Option(..., "--out", help="Export directory to write (replaced atomically on success)."),
    target: str = typer.Option("cpu", "--target", help="cpu (text: dynamic int8; images: static QDQ int8, dynamic "
                               "int8 measured for comparison) | gpu (static QDQ int8 + fp16)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (14-20)."),
    atol: float = typer.Option(1e-4, "--atol", help="Parity gate: max |logit diff| PyTorch vs ONNX Runtime."),
    max_drop: float = typer.Option(0.5, "--max-drop", help="Accuracy gate: max test-accuracy drop in points."),
    on_drop: str = typer.Option("fallback", "--on-drop", help="fallback (ship the next variant) | fail."),
    max_length: int | None = typer.Option(None, "--max-length",
                                          help="Token limit of text models (default: the training run's, "
                                          "else 128)."),
    calibration_size: int = typer.Option(128, "--calibration-size",
                                         help="Training rows (images) calibrating static QDQ (gpu; images also cpu)."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="minmax | percentile | entropy."),
    gpu_prefer: str = typer.Option("fp16", "--gpu-prefer", help="gpu: recommend fp16 or qdq (TensorRT int8)."),
    cpu_isa: str = typer.Option("portable", "--cpu-isa", help="CPU int8 recipe: portable (7-bit weights, the same "
                                "accuracy on every CPU) | vnni (8-bit, serve on VNNI/AMX nodes only) | native "
                                "(vnni if this CPU has VNNI, else portable)."),
    agreement_sample_size: int = typer.Option(64, "--agreement-sample-size", help="Validation inputs stored with "
                                              "fp32 labels for the deploy-time agreement check (0: none)."),
    monitor_baseline_size: int = typer.Option(500, "--monitor-baseline-size", help="Validation rows of the "
                                              "drift-monitoring baseline written beside the graphs (0: none)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
    max_eval_samples: int | None = typer.Option(None, "--max-eval-samples", help="Cap on test rows for the gate."),
    latency_runs: int = typer.Option(50, "--latency-runs", help="Timed batch-1 runs per variant (0: skip)."),
    throughput_runs: int = typer.Option(5, "--throughput-runs", help="Timed batch-32 runs per variant (0: skip)."),
    throughput_batch_size: int = typer.Option(32, "--throughput-batch-size",
                                              help="Batch size of the throughput measurement."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle/--no-allow-pickle", help="Accept pickle weights."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code/--no-trust-remote-code",
                                           help="Accept models with custom code."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a text or image classifier to ONNX (parity-gated), quantize it (accuracy-gated); write io_spec.json."""
    from transferkit.export import ExportConfig, export_model
    from transferkit.tasks import get_task

    config = ExportConfig(
        model_dir=Path(model), data_dir=data, out_dir=out, target=target, opset=opset, atol=atol,
        max_drop=max_drop, on_drop=on_drop, max_length=max_length, calibration_size=calibration_size,
        calibration_method=calibration_method, gpu_prefer=gpu_prefer, threads=threads, cpu_isa=cpu_isa,
        agreement_sample_size=agreement_sample_size,
        monitor_baseline_size=monitor_baseline_size,
        max_eval_samples=max_eval_samples, latency_runs=latency_runs, throughput_runs=throughput_runs,
        throughput_batch_size=throughput_batch_size,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    )
    result = export_model(config)
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
        return
    console.print(
        f"Wrote {result.out_dir}: recommended {result.recommended_variant} ({result.recommended_file}), "
        f"parity max |diff| {result.parity_max_abs_diff:.2g}, accuracy gate "
        f"{'passed' if result.passed else 'fell back'}"
    )
    unit = get_task(result.task).item_unit
    for name, v in result.variants.items():
        accuracy = "n/a" if v.accuracy is None else f"{v.accuracy:.2%}"
        speed = "" if v.throughput_seq_per_s is None else f", {v.throughput_seq_per_s:.1f} {unit}/s"
        console.print(f"  {name:5s} {v.size_bytes / 1e6:7.1f} MB  accuracy {accuracy}  "
                      f"{'kept' if v.kept else 'dropped'} ({v.reason}){speed}")
    console.print(f"int8 recipe {result.int8_recipe['name']} (cpu_isa={result.int8_recipe['requested']}); gates ran "
                  f"on {result.cpu['model']} ({result.cpu['int8_isa']})")
    console.print(f"Report: {result.report_html}")
