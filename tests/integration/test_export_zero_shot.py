"""The zero-shot off_the_shelf model from the fine-tune step exports through the real CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_movie_slice
from transferkit.export import IOSpec

pytestmark = pytest.mark.integration


def test_zero_shot_classifier_exports_with_parity(tmp_path: Path) -> None:
    from transferkit.train import run_training
    from transferkit.train.config import TrainConfig

    data = write_movie_slice(tmp_path / "data", train=32, validation=16, test=32, seed=1)
    trained = run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="off_the_shelf",
                                       out_dir=tmp_path / "model", max_length=32))
    assert trained.written
    out = tmp_path / "onnx"
    cli = Path(sys.executable).with_name("transferkit")
    proc = subprocess.run(
        [str(cli), "export", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out),
         "--target", "cpu", "--threads", "2", "--latency-runs", "2", "--throughput-runs", "1", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["max_length"] == 32  # taken from the training run's summary
    assert result["parity_max_abs_diff"] <= 1e-4
    int8 = result["variants"]["int8"]
    assert int8["kept"] == (int8["accuracy_drop_pt"] <= 0.5)
    assert result["recommended_variant"] == ("int8" if int8["kept"] else "fp32")
    spec = IOSpec.load(out)
    assert spec.labels == ["negative", "positive"] and spec.recommended_variant == result["recommended_variant"]
    assert (out / spec.recommended_file).is_file()
