"""Image classifier export on real digits: parity, static QDQ vs dynamic int8, io_spec contract, bad inputs.

The model is EfficientNet-Lite0 with ImageNet weights at 32 px and a ridge head fitted on training images, so
accuracies are real ones. The CPU export runs once per module.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.helpers import prepare_image_data, write_movie_slice
from tests.unit.export import models
from transferkit.cli.main import app
from transferkit.data.prepared import load_prepared
from transferkit.data.transforms import ImagePreprocessConfig, ImagePreprocessor
from transferkit.errors import ConfigError, DataError, ExportError, ModelError, ParityError, PreparedDataError
from transferkit.export import ExportConfig, IOSpec, export_model
from transferkit.export.parity import check_image_parity

runner = CliRunner()
IMAGE_SIZE = 32
# One test image is 0.56 points of the 180-image digits test split. The portable int8 recipe (7-bit GEMM weights)
# costs this 32 px model with a ridge head 5.6 points (10 images) on every CPU (identical predictions under an
# emulated AVX2 CPU: tests/integration/test_int8_portability.py). These tests check the export's mechanics with a
# budget that keeps QDQ; the gate's decision is asserted from the drop it measured.
MAX_DROP = 10.0


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_image_data(tmp_path_factory.mktemp("export-image-data") / "digits")


@pytest.fixture(scope="module")
def image_model_dir(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.fitted_image_model(digits_dir, tmp_path_factory.mktemp("export-image-models") / "lite0",
                                     image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def exported(image_model_dir: Path, digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export-image") / "onnx"
    return export_model(ExportConfig(image_model_dir, digits_dir, out, target="cpu", max_drop=MAX_DROP, threads=2,
                                     latency_runs=3, throughput_runs=1, throughput_batch_size=8))


def _metrics(exported) -> dict:
    return json.loads(exported.metrics_path.read_text())


def test_directory_layout_and_recommendation(exported) -> None:
    out = exported.out_dir
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.qdq.onnx", "io_spec.json", "labels.json", "preprocessor.json", "metrics.json",
            "report.md", "report.html"} <= names
    assert "tokenizer" not in names and "model.fp16.onnx" not in names
    assert "model.int8.onnx" not in names  # dynamic int8 failed the gate: measured, not shipped
    assert exported.task == "image-classification" and exported.input_shape == [-1, 3, IMAGE_SIZE, IMAGE_SIZE]
    assert exported.recommended_variant == "qdq" and exported.recommended_file == "model.qdq.onnx"
    assert exported.passed and not exported.fallback  # the comparison-only variant does not count
    assert exported.max_length is None and exported.graph_rewrites == {}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_parity_gate_on_validation_images(exported) -> None:
    cases = exported.parity_cases
    assert [c.batch_size for c in cases] == [1, 4, 8, 3]
    assert all(c.input_shape == [c.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE] for c in cases)
    assert all(c.max_abs_diff <= 1e-4 and c.labels_agree and c.padding == "none" for c in cases)
    assert exported.parity_max_abs_diff == max(c.max_abs_diff for c in cases) > 0


def test_qdq_and_dynamic_int8_are_gated_and_reported(exported) -> None:
    variants = _metrics(exported)["variants"]
    assert set(variants) == {"fp32", "qdq", "int8"}
    fp32, qdq, int8 = variants["fp32"], variants["qdq"], variants["int8"]
    assert fp32["accuracy"] > 0.7  # a real classifier, not chance (0.1)
    for variant in (qdq, int8):
        assert variant["accuracy_drop_pt"] == pytest.approx((fp32["accuracy"] - variant["accuracy"]) * 100, abs=1e-3)
        assert 0 < variant["agreement_with_fp32"] <= 1
        assert variant["size_bytes"] < 0.35 * fp32["size_bytes"]  # int8 weights
    for variant in variants.values():
        assert variant["latency_b1_p50_ms"] > 0 and variant["throughput_seq_per_s"] > 0
    for variant in (qdq, int8):  # kept iff the measured drop is within max_drop
        assert variant["kept"] == (variant["accuracy_drop_pt"] <= MAX_DROP)
    assert qdq["kept"]
    # "dynamic int8 suits CNNs poorly": ConvInteger loses many points on this CNN.
    assert not int8["kept"] and int8["accuracy_drop_pt"] > MAX_DROP
    assert "measured for comparison" in int8["reason"]
    scalars = _metrics(exported)["scalars"]
    assert {"qdq_accuracy", "qdq_accuracy_drop_pt", "int8_accuracy", "int8_accuracy_drop_pt", "qdq_size_mb",
            "int8_throughput_seq_per_s"} <= set(scalars)
    markdown = exported.report_md.read_text()
    assert "| qdq | model.qdq.onnx |" in markdown and "| int8 | model.int8.onnx |" in markdown
    assert "img/s" in markdown and "Recommendation order: qdq > fp32" in markdown


def test_qdq_graph_is_static_with_uint8_activations(exported) -> None:
    graph = onnx.load(str(exported.out_dir / "model.qdq.onnx"))
    ops = Counter(node.op_type for node in graph.graph.node)
    assert ops["Conv"] >= 40 and ops["QuantizeLinear"] >= 40 and ops["DequantizeLinear"] >= ops["Conv"]
    assert "ConvInteger" not in ops and "DynamicQuantizeLinear" not in ops
    zero_points = {onnx.numpy_helper.to_array(i).dtype for i in graph.graph.initializer
                   if i.name.endswith("_zero_point")}
    assert np.dtype(np.uint8) in zero_points  # asymmetric uint8 activations: ONNX Runtime's CPU kernels


def test_portable_recipe_uses_7_bit_weights_except_depthwise(exported) -> None:
    graph = onnx.load(str(exported.out_dir / "model.qdq.onnx")).graph
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")}
    depthwise = {name for name, values in weights.items() if values.ndim == 4 and values.shape[1] == 1}
    assert len(depthwise) >= 10 and len(weights) > len(depthwise) + 20
    for name, values in weights.items():
        # Depthwise kernels accumulate in 32 bits on every CPU: they keep full 8-bit weights.
        assert int(np.abs(values.astype(np.int32)).max()) == (127 if name in depthwise else 64), name
    spec = IOSpec.load(exported.out_dir)
    assert spec.int8_recipe["name"] == "portable" and spec.int8_recipe["reduce_range"] is True
    assert spec.int8_recipe["serving_node_labels"] == [] and spec.export_cpu["int8_isa"]


def test_io_spec_is_the_serving_contract(exported, image_model_dir: Path) -> None:
    out = exported.out_dir
    spec = IOSpec.load(out)
    assert spec.task == "image-classification" and spec.model_type == "efficientnet-lite0"
    assert [(t.name, t.dtype, t.dims) for t in spec.inputs] == [("pixel_values", "float32", [-1, 3, 32, 32])]
    assert [(t.name, t.dtype, t.dims) for t in spec.outputs] == [("logits", "float32", [-1, 10])]
    assert spec.tokenizer_dir is None and spec.tokenizer_files == [] and spec.max_length is None
    expected = json.loads((image_model_dir / "preprocessor.json").read_text())
    assert spec.preprocessing == expected == json.loads((out / "preprocessor.json").read_text())
    assert ImagePreprocessConfig.from_dict(spec.preprocessing).image_size == IMAGE_SIZE
    assert spec.labels == [str(i) for i in range(10)] == json.loads((out / "labels.json").read_text())
    assert set(spec.variants) == {"fp32", "qdq"} and spec.recommended_variant == "qdq"
    assert spec.recommended_file == "model.qdq.onnx" and spec.target == "cpu" and spec.opset == 17
    qdq = spec.variants["qdq"]
    assert qdq.precision == "qdq-int8" and qdq.providers == ["CPUExecutionProvider"]
    assert qdq.size_bytes == (out / "model.qdq.onnx").stat().st_size
    assert qdq.primary_metric == exported.variants["qdq"].accuracy
    assert qdq.primary_metric_drop_pt == exported.variants["qdq"].accuracy_drop_pt


def test_export_dir_alone_classifies_images_with_any_batch_size(exported, digits_dir: Path) -> None:
    """What a server does: preprocessing from the export directory, the recommended graph, dynamic batch."""
    out = exported.out_dir
    spec = IOSpec.load(out)
    preprocessor = ImagePreprocessor.from_dir(out)
    dataset = load_prepared(digits_dir)
    images, labels = dataset.images("test")[:40], np.asarray(dataset.label_ids("test")[:40])
    session = ort.InferenceSession(str(out / spec.recommended_file), providers=["CPUExecutionProvider"])
    [graph_input] = session.get_inputs()
    assert graph_input.name == "pixel_values" and isinstance(graph_input.shape[0], str)
    assert graph_input.shape[1:] == [3, 32, 32]
    pixels = preprocessor.batch(images).numpy()
    logits = np.concatenate([session.run(["logits"], {"pixel_values": pixels[:1]})[0],
                             session.run(["logits"], {"pixel_values": pixels[1:]})[0]])
    assert logits.shape == (40, 10) and np.isfinite(logits).all()
    assert np.mean(logits.argmax(axis=1) == labels) > 0.6


def test_image_parity_gate_raises_instead_of_warning(exported, image_model_dir: Path, digits_dir: Path) -> None:
    from transferkit.models.vision import load_image_classifier

    model = load_image_classifier(image_model_dir)
    pixels = ImagePreprocessor.from_dir(exported.out_dir).batch(load_prepared(digits_dir).images("validation")[:8])
    session = ort.InferenceSession(str(exported.out_dir / "model.qdq.onnx"))  # a graph that drifts
    with pytest.raises(ParityError, match=r"> atol 0.0001 x logit scale .* at batch 1, pixel_values"):
        check_image_parity(model, session, pixels.numpy(), 1e-4)


def test_cli_gpu_target_builds_symmetric_qdq_and_fp16(image_model_dir: Path, digits_dir: Path, tmp_path: Path):
    out = tmp_path / "onnx"
    result = runner.invoke(app, [
        "export", "--model", str(image_model_dir), "--data", str(digits_dir), "--out", str(out), "--target", "gpu",
        "--calibration-size", "16", "--max-drop", "100", "--max-eval-samples", "48", "--threads", "2",
        "--latency-runs", "1", "--throughput-runs", "1", "--throughput-batch-size", "4",
    ])
    assert result.exit_code == 0, result.output
    assert "recommended fp16" in result.output and "img/s" in result.output
    spec = IOSpec.load(out)
    assert set(spec.variants) == {"fp32", "fp16", "qdq"} and spec.target == "gpu"
    assert spec.variants["qdq"].providers == ["TensorrtExecutionProvider"]
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    zero_points = [i for i in qdq.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and not any(onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
    assert any(n.op_type == "Conv" for n in qdq.graph.node)
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types


# Bad inputs: one-line typed errors naming the file, non-zero exit, nothing left behind.


def _run_export(model: Path, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["export", "--model", str(model), "--data", str(data), "--out", str(out),
                               "--threads", "2", *extra])


def _assert_failed_cleanly(result, out: Path, error: type, pattern: str) -> None:
    assert result.exit_code == error.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_image_model_with_a_text_dataset(image_model_dir: Path, tmp_path: Path) -> None:
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    result = _run_export(image_model_dir, data, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ModelError,
                           r"an image classifier, but .*movie/schema.json is for text-classification")


def test_text_model_with_an_image_dataset(digits_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert",
                                                   "architectures": ["BertForSequenceClassification"]}))
    result = _run_export(model, digits_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ModelError,
                           r"a text classifier, but .*digits/schema.json is for image-classification")


def test_dataset_without_test_split(image_model_dir: Path, digits_dir: Path, tmp_path: Path) -> None:
    data = shutil.copytree(digits_dir, tmp_path / "data", ignore=shutil.ignore_patterns("test.parquet"))
    result = _run_export(image_model_dir, data, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", PreparedDataError, r"data: not a .* missing test.parquet")


def test_undecodable_test_image_names_file_and_row(image_model_dir: Path, digits_dir: Path, tmp_path: Path) -> None:
    data = shutil.copytree(digits_dir, tmp_path / "data")
    table = pq.read_table(data / "test.parquet")
    images = table.column("image").to_pylist()
    images[2] = b"not an image"
    pq.write_table(table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.binary())),
                   data / "test.parquet")
    result = _run_export(image_model_dir, data, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", DataError, r"data/test.parquet row 2: cannot decode image")


def test_image_model_without_preprocessor_json(image_model_dir: Path, digits_dir: Path, tmp_path: Path) -> None:
    model = shutil.copytree(image_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("preprocessor.json"))
    result = _run_export(model, digits_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ConfigError, r"model: no preprocessor.json")


def test_image_labels_that_differ_from_the_dataset(image_model_dir: Path, digits_dir: Path, tmp_path: Path) -> None:
    model = shutil.copytree(image_model_dir, tmp_path / "model")
    (model / "labels.json").write_text(json.dumps([f"digit-{i}" for i in range(10)]))
    result = _run_export(model, digits_dir, tmp_path / "onnx")
    _assert_failed_cleanly(result, tmp_path / "onnx", ExportError, r"model labels \['digit-0'.* differ from")
