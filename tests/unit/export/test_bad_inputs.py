"""Bad inputs: one-line errors, non-zero exit, no output directory (and no temporary sibling) left behind."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.unit.export import models
from transferkit.cli.main import app
from transferkit.errors import ConfigError, ExportError, ModelError, PreparedDataError
from transferkit.export import ExportConfig, quantize_onnx

runner = CliRunner()


def _run_export(model: Path | str, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["export", "--model", str(model), "--data", str(data), "--out", str(out),
                               "--max-length", "32", "--threads", "2", *extra])


def _assert_failed_cleanly(result, out: Path, error: type, pattern: str) -> None:
    assert result.exit_code == error.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def _copy_without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


def test_model_dir_without_weights(minilm_dir: Path, movie_dir: Path, tmp_path: Path) -> None:
    model = _copy_without(minilm_dir, tmp_path / "model", "model.safetensors")
    result = _run_export(model, movie_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ModelError, r"no weights found \(expected model.safetensors\)")


def test_model_dir_without_tokenizer(minilm_dir: Path, movie_dir: Path, tmp_path: Path) -> None:
    model = _copy_without(minilm_dir, tmp_path / "model", "tokenizer*", "vocab.txt", "special_tokens_map.json")
    result = _run_export(model, movie_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ModelError, r"model: no tokenizer files")


def test_empty_calibration_split_for_static_quantization(minilm_dir: Path, movie_dir: Path, tmp_path: Path) -> None:
    data = shutil.copytree(movie_dir, tmp_path / "data")
    table = pq.read_table(data / "train.parquet")
    pq.write_table(table.slice(0, 0), data / "train.parquet")
    result = _run_export(minilm_dir, data, tmp_path / "onnx", "--target", "gpu")
    _assert_failed_cleanly(result, tmp_path / "onnx", PreparedDataError,
                           r"train.parquet: no rows; static QDQ calibration")


def test_empty_test_split(minilm_dir: Path, movie_dir: Path, tmp_path: Path) -> None:
    data = shutil.copytree(movie_dir, tmp_path / "data")
    pq.write_table(pq.read_table(data / "test.parquet").slice(0, 0), data / "test.parquet")
    result = _run_export(minilm_dir, data, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", PreparedDataError, r"test.parquet: no rows; the accuracy gate")


def test_unsupported_architecture(movie_dir: Path, tmp_path: Path) -> None:
    model = models.tiny_t5(movie_dir, tmp_path / "t5")
    result = _run_export(model, movie_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ExportError,
                           r"unsupported architecture model_type='t5' .* supported: bert, roberta")


def test_encoder_without_classification_head(movie_dir: Path, tmp_path: Path) -> None:
    result = _run_export("minilm-l6", movie_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ExportError, r"has no sequence-classification head")


def test_labels_that_differ_from_the_dataset(minilm_dir: Path, movie_dir: Path, tmp_path: Path) -> None:
    model = shutil.copytree(minilm_dir, tmp_path / "model")
    (model / "labels.json").write_text('["bad", "good"]')
    result = _run_export(model, movie_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ExportError, r"model labels \['bad', 'good'\] differ from")


def test_invalid_option_is_a_config_error(minilm_dir: Path, movie_dir: Path, tmp_path: Path) -> None:
    result = _run_export(minilm_dir, movie_dir, tmp_path / "onnx", "--target", "tpu")
    _assert_failed_cleanly(result, tmp_path / "onnx", ConfigError, r"target: 'tpu' is not one of cpu, gpu")


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real fp32 graph: a tiny random RoBERTa classifier exported through the step."""
    from tests.helpers import write_movie_slice
    from transferkit.export import export_model

    root = tmp_path_factory.mktemp("quantize-input")
    data = write_movie_slice(root / "data", train=16, validation=8, test=8)
    model = models.tiny_roberta(data, root / "model")
    result = export_model(ExportConfig(model, data, root / "onnx", max_length=16, threads=2, max_drop=100,
                                       latency_runs=0, throughput_runs=0))
    return result.out_dir / "model.onnx"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_quantizer_rejects_damaged_onnx(fp32_onnx: Path, tmp_path: Path, damage: str) -> None:
    src = tmp_path / "model.onnx"
    data = fp32_onnx.read_bytes()
    if damage == "truncated":
        src.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        src.write_bytes(b"\x08\x07not an onnx model" * 100)
    elif damage == "empty":
        src.write_bytes(b"")
    dst = tmp_path / "out" / "model.int8.onnx"
    with pytest.raises(ExportError) as info:
        quantize_onnx(src, dst, mode="dynamic")
    message = str(info.value)
    assert "\n" not in message and str(src) in message
    assert {"truncated": "not a valid ONNX model", "garbage": "not a valid ONNX model", "empty": "is empty",
            "missing": "not found"}[damage] in message
    assert not dst.exists() and not (dst.parent.exists() and any(dst.parent.iterdir()))


def test_quantizer_standalone_dynamic_and_qdq_needs_calibration(fp32_onnx: Path, tmp_path: Path) -> None:
    import onnx

    dst = quantize_onnx(fp32_onnx, tmp_path / "model.int8.onnx", mode="dynamic")
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(dst)).graph.node)
    with pytest.raises(ExportError, match="needs calibration samples; got none"):
        quantize_onnx(fp32_onnx, tmp_path / "model.qdq.onnx", mode="qdq", calibration=[])
    assert not (tmp_path / "model.qdq.onnx").exists()
    with pytest.raises(ExportError, match="mode 'int4' is not one of dynamic, qdq, fp16"):
        quantize_onnx(fp32_onnx, tmp_path / "x.onnx", mode="int4")
