"""`transferkit export`: ONNX export with a parity gate, quantization with an accuracy gate."""

from __future__ import annotations

import inspect
import json
from typing import Any

import typer

from transferkit.cli._common import console, handle_errors
from transferkit.export.config import ExportConfig
from transferkit.options import split_options, with_config_options


@handle_errors
@with_config_options(ExportConfig, [inspect.Parameter(
    "as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--json", help="Print the result as JSON."),
)])
def export(**options: Any) -> None:
    """Export a text or image classifier to ONNX (parity-gated), quantize it (accuracy-gated); write io_spec.json."""
    from transferkit.export import export_model
    from transferkit.tasks import get_task

    config_values, rest = split_options(ExportConfig, options)
    config, as_json = ExportConfig(**config_values), rest["as_json"]
    result = export_model(config)
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
        return
    if hasattr(result, "summary_lines"):  # a task's own export (generative models)
        for line in result.summary_lines():
            console.print(line)
        console.print(f"Report: {result.report_html}")
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
