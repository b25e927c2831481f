"""The Triton repository generated for an image-classifier export (digits, EfficientNet-Lite0 at 32x32)."""

import json
import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.unit.serve.image_export import IMAGE_SIZE, shared_image_export
from transferkit.errors import ServingError
from transferkit.serve.repository import RepositoryOptions, build_model_repository, load_export, model_names

pb = model_config_pb2
LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def export_dir():
    return shared_image_export().export_dir


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "models"
    build_model_repository(export_dir, "digits", out, version=2)
    return out


def _parse(path):
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def test_load_export_recognises_an_image_model(export_dir):
    exported = load_export(export_dir)
    assert exported.kind == "image" and exported.tokenizer_dir is None
    assert exported.image_size == IMAGE_SIZE
    assert exported.image_preprocessing["kind"] == "image"
    assert exported.labels == LABELS
    assert model_names("digits", kind="image") == ["digits_preprocess", "digits_onnx", "digits_postprocess", "digits"]
    assert model_names("s", kind="text")[0] == "s_tokenizer"
    assert model_names("t", kind="tensor") == ["t_onnx", "t_postprocess", "t"]


def test_layout_and_every_config_parses(repo, export_dir):
    assert sorted(p.name for p in repo.iterdir()) == [
        "digits", "digits_onnx", "digits_postprocess", "digits_preprocess"]
    for config in repo.rglob("*.pbtxt"):
        model_dir = config.parent.parent if config.parent.name == "configs" else config.parent
        assert _parse(config).name == model_dir.name
    assert (repo / "digits_preprocess/2/model.py").read_text().startswith('"""Triton python-backend model: encoded')
    settings = json.loads((repo / "digits_preprocess/2/preprocessor.json").read_text())
    assert settings == load_export(export_dir).image_preprocessing
    assert (repo / "digits_onnx/2/model.onnx").stat().st_size > 1_000_000
    assert "digits_preprocess -> digits_onnx" in (repo / "digits/2/ENSEMBLE.txt").read_text()
    for model in ("digits", "digits_onnx", "digits_postprocess"):
        assert (repo / model / "labels.txt").read_text().splitlines() == LABELS


def test_preprocess_config_takes_bytes_and_gives_pixel_values(repo):
    config = _parse(repo / "digits_preprocess/config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("image", pb.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("pixel_values", pb.TYPE_FP32, [3, IMAGE_SIZE, IMAGE_SIZE])]
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert config.HasField("dynamic_batching")
    assert config.parameters["preprocessor_file"].string_value == "preprocessor.json"
    assert not (repo / "digits_preprocess/configs").exists()  # one config for production and local


def test_graph_configs(repo):
    production = _parse(repo / "digits_onnx/config.pbtxt")
    local = _parse(repo / "digits_onnx/configs/local.pbtxt")
    assert production.platform == "onnxruntime_onnx" and production.default_model_filename == "model.onnx"
    assert production.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert local.backend == "python" and not local.platform
    for config in (production, local):
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            ("pixel_values", pb.TYPE_FP32, [3, IMAGE_SIZE, IMAGE_SIZE])]
        assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in config.output] == [
            ("logits", pb.TYPE_FP32, [10], "labels.txt")]
        assert not any(i.allow_ragged_batch for i in config.input)  # fixed-size images batch as they are


def test_ensemble_chains_preprocess_graph_postprocess(repo):
    config = _parse(repo / "digits/config.pbtxt")
    assert config.platform == "ensemble"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("image", pb.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", pb.TYPE_FP32, [10]), ("probabilities", pb.TYPE_FP32, [10]), ("label", pb.TYPE_STRING, [1])]
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["digits_preprocess", "digits_onnx", "digits_postprocess"]
    assert dict(steps[0].input_map) == {"image": "image"}
    assert dict(steps[0].output_map) == {"pixel_values": "_pixel_values"}
    assert dict(steps[1].input_map) == {"pixel_values": "_pixel_values"}
    assert dict(steps[2].output_map) == {"logits": "logits", "probabilities": "probabilities", "label": "label"}


def test_cpu_production_option_applies_to_the_graph(export_dir, tmp_path):
    build_model_repository(export_dir, "m", tmp_path / "cpu", options=RepositoryOptions(instance_kind="cpu"))
    assert _parse(tmp_path / "cpu/m_onnx/config.pbtxt").instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU


def _broken_copy(export_dir, target, edit):
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns("*.onnx"))
    spec = json.loads((target / "io_spec.json").read_text())
    edit(spec)
    (target / "io_spec.json").write_text(json.dumps(spec))
    for graph in export_dir.glob("*.onnx"):
        (target / graph.name).symlink_to(graph)
    return target


def test_preprocessor_json_is_the_fallback(export_dir, tmp_path):
    def drop(spec):
        spec["preprocessing"] = {}

    copy = _broken_copy(export_dir, tmp_path / "fallback", drop)
    assert load_export(copy, check_onnx=False).image_size == IMAGE_SIZE
    (copy / "preprocessor.json").unlink()
    with pytest.raises(ServingError, match=r"io_spec.json: task 'image-classification' needs image preprocessing"):
        load_export(copy, check_onnx=False)


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda s: s["preprocessing"].update(image_size=0), r"io_spec.json: preprocessing: image_size=0"),
    (lambda s: s["preprocessing"].update(colour="red"), r"unknown image preprocessing field\(s\) colour"),
    (lambda s: s["inputs"][0].update(dims=[-1, 3, 64, 64]), r"dims \[-1, 3, 64, 64\] do not match .* image_size 32"),
    (lambda s: s["inputs"][0].update(dtype="int64"), r"inputs\[0\] 'pixel_values': expected float32"),
    (lambda s: s["inputs"].append({"name": "mask", "dtype": "float32", "dims": [-1, 1]}),
     r"exactly one input \(pixel_values\)"),
])
def test_bad_image_specs_are_one_line_errors(export_dir, tmp_path, edit, pattern):
    copy = _broken_copy(export_dir, tmp_path / "bad", edit)
    with pytest.raises(ServingError, match=pattern) as info:
        build_model_repository(copy, "m", tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_image_smoke_inputs_are_read_before_publishing(export_dir, tmp_path):
    from tests.unit.serve.image_export import shared_image_export
    from transferkit.errors import ConfigError
    from transferkit.serve.deploy import DeployConfig, _smoke_images

    exported = load_export(export_dir)
    base = {"onnx_dir": export_dir, "name": "m", "repository": str(tmp_path / "repo"),
            "triton_url": "http://127.0.0.1:1"}
    assert _smoke_images(DeployConfig(**base), exported) is None  # generated images
    data = shared_image_export().data_dir
    images = _smoke_images(DeployConfig(**base, smoke_data=data, smoke_count=2), exported)
    assert len(images) == 2 and all(png.startswith(b"\x89PNG") for png in images)
    with pytest.raises(ConfigError, match=r"smoke_expected_labels: 3 labels for 2 smoke images"):
        _smoke_images(DeployConfig(**base, smoke_data=data, smoke_count=2, smoke_expected_labels=["1", "2", "3"]),
                      exported)
    with pytest.raises(ConfigError, match=r"smoke_expected_labels: for an image model set smoke_data too"):
        _smoke_images(DeployConfig(**base, smoke_expected_labels=["1"] * 4), exported)
