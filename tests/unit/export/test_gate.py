"""Accuracy gate on a model that int8 breaks (an outlier activation channel): fallback and fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.export.conftest import quick
from transferkit.cli.main import app
from transferkit.errors import QuantizationGateError
from transferkit.export import ExportConfig, IOSpec, export_model

runner = CliRunner()


def test_cli_falls_back_to_fp32_when_int8_exceeds_max_drop(outlier_dir: Path, movie_dir: Path, tmp_path: Path):
    out = tmp_path / "onnx"
    result = runner.invoke(app, [
        "export", "--model", str(outlier_dir), "--data", str(movie_dir), "--out", str(out), "--target", "cpu",
        "--max-drop", "0.1", "--max-length", "32", "--threads", "2", "--latency-runs", "2", "--throughput-runs", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "recommended fp32" in result.output and "dropped" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    int8 = metrics["variants"]["int8"]
    assert metrics["recommended_variant"] == "fp32" and metrics["passed"] is False and metrics["fallback"] is True
    assert metrics["variants"]["fp32"]["accuracy"] == 1.0
    assert int8["kept"] is False and int8["accuracy_drop_pt"] > 0.1 and "> max_drop 0.1" in int8["reason"]
    assert int8["agreement_with_fp32"] < 1.0
    assert not (out / "model.int8.onnx").exists()  # a dropped variant is not shipped
    spec = IOSpec.load(out)
    assert set(spec.variants) == {"fp32"} and spec.recommended_variant == "fp32"
    assert "dropped" in (out / "report.md").read_text()


def test_on_drop_fail_raises_and_writes_nothing(outlier_dir: Path, movie_dir: Path, tmp_path: Path):
    out = tmp_path / "onnx"
    config = ExportConfig(outlier_dir, movie_dir, out, on_drop="fail", **quick(latency_runs=0, throughput_runs=0))
    with pytest.raises(QuantizationGateError, match=r"accuracy gate: int8 accuracy .* points below fp32 100\.00%"):
        export_model(config)
    assert not out.exists() and list(tmp_path.iterdir()) == []
