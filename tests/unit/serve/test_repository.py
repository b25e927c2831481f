import json
import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.unit.serve.exported import LABELS, pair_export, shared_export
from transferkit.errors import ConfigError, ServingError
from transferkit.serve.repository import (
    RepositoryOptions,
    build_model_repository,
    load_export,
    parse_pbtxt,
    validate_model_name,
)


@pytest.fixture(scope="module")
def export_dir():
    return shared_export()


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "models"
    build_model_repository(export_dir, "sentiment", out, version=3)
    return out


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", ["a/b", "..", "../etc", "x..y", "", "a b", "-lead", "back\\slash", "x" * 64])
def test_bad_model_names_are_rejected(name):
    with pytest.raises(ConfigError, match="name"):
        validate_model_name(name)


@pytest.mark.parametrize("name", ["minilm", "MiniLM_v2", "sentiment-en.1", "a"])
def test_good_model_names(name):
    assert validate_model_name(name) == name


def test_layout_and_every_config_parses(repo):
    assert sorted(p.name for p in repo.iterdir()) == [
        "sentiment", "sentiment_onnx", "sentiment_postprocess", "sentiment_tokenizer"]
    for config in repo.rglob("*.pbtxt"):
        model_dir = config.parent.parent if config.parent.name == "configs" else config.parent
        assert _parse(config).name == model_dir.name
    assert (repo / "sentiment_onnx/3/model.onnx").stat().st_size > 1_000_000
    assert (repo / "sentiment_onnx/3/model.py").is_file()
    assert (repo / "sentiment_tokenizer/3/tokenizer/tokenizer.json").is_file()
    assert (repo / "sentiment/3/ENSEMBLE.txt").is_file()
    assert sorted(p.name for p in (repo / "sentiment/3").glob("*.py")) == [
        "model.py", "monitor_client.py", "onnx_model.py", "postprocess_model.py", "tokenizer_model.py"]
    for model in ("sentiment", "sentiment_onnx", "sentiment_postprocess"):
        assert (repo / model / "labels.txt").read_text().splitlines() == LABELS


def test_production_config(repo):
    pb = model_config_pb2
    config = _parse(repo / "sentiment_onnx/config.pbtxt")
    assert config.platform == "onnxruntime_onnx"
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in config.output] == ["logits"]
    assert config.output[0].label_filename == "labels.txt"
    assert list(config.output[0].dims) == [len(LABELS)]
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert config.dynamic_batching.max_queue_delay_microseconds == RepositoryOptions().max_queue_delay_us
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.version_policy.latest.num_versions == 1
    assert config.max_batch_size == 32
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert not any(i.allow_ragged_batch for i in config.input)


def test_local_config_is_python_backend_with_ragged_batching(repo):
    config = _parse(repo / "sentiment_onnx/configs/local.pbtxt")
    assert config.backend == "python" and not config.platform
    assert all(i.allow_ragged_batch for i in config.input)
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["intra_op_threads"].string_value == "1"
    assert config.instance_group[0].count == 2
    assert json.loads(config.parameters["pad_values"].string_value) == {
        "input_ids": 0, "attention_mask": 0, "token_type_ids": 0}


def test_ensemble_chains_tokenizer_graph_postprocess(repo):
    config = _parse(repo / "sentiment/config.pbtxt")
    assert config.platform == "ensemble"
    assert [s.model_name for s in config.ensemble_scheduling.step] == [
        "sentiment_tokenizer", "sentiment_onnx", "sentiment_postprocess"]
    assert [i.name for i in config.input] == ["text"]
    assert config.input[0].data_type == model_config_pb2.TYPE_STRING
    assert [o.name for o in config.output] == ["logits", "probabilities", "label"]
    tokenizer = _parse(repo / "sentiment_tokenizer/config.pbtxt")
    assert tokenizer.parameters["max_length"].string_value == "64"
    assert tokenizer.parameters["pad_id"].string_value == "0"  # BERT [PAD]


def test_cpu_and_tensorrt_options(export_dir, tmp_path):
    pb = model_config_pb2
    build_model_repository(export_dir, "m", tmp_path / "cpu", options=RepositoryOptions(instance_kind="cpu",
                                                                                        instance_count=2))
    config = _parse(tmp_path / "cpu/m_onnx/config.pbtxt")
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU and config.instance_group[0].count == 2
    build_model_repository(export_dir, "m", tmp_path / "trt", options=RepositoryOptions(tensorrt_fp16=True))
    accel = _parse(tmp_path / "trt/m_onnx/config.pbtxt").optimization.execution_accelerators
    assert accel.gpu_execution_accelerator[0].name == "tensorrt"
    assert accel.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"preferred_batch_sizes": (64,)}, "preferred_batch_sizes"),
    ({"instance_kind": "tpu"}, "instance_kind"),
    ({"tensorrt_fp16": True, "instance_kind": "cpu"}, "tensorrt_fp16"),
    ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
])
def test_options_are_validated(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        RepositoryOptions(**kwargs)


def test_parse_pbtxt_rejects_typos():
    with pytest.raises(ServingError, match="invalid model config"):
        parse_pbtxt('name: "x"\nplatfrom: "onnxruntime_onnx"\n')
    with pytest.raises(ServingError):
        parse_pbtxt('instance_group { kind: KIND_TPU }')


def test_missing_io_spec(tmp_path):
    with pytest.raises(ServingError, match=r"io_spec.json: missing"):
        load_export(tmp_path)


def test_onnx_that_does_not_load(export_dir, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(export_dir, broken, ignore=shutil.ignore_patterns("*.onnx"))
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ServingError, match="ONNX Runtime cannot load"):
        build_model_repository(broken, "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_and_wrong_names(export_dir, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(export_dir, broken)
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ServingError, match=r"tokenizer.json: missing"):
        load_export(broken, check_onnx=False)
    spec = json.loads((export_dir / "io_spec.json").read_text())
    spec["outputs"][0]["name"] = "scores"
    shutil.copy(export_dir / "tokenizer" / "tokenizer.json", broken / "tokenizer" / "tokenizer.json")
    (broken / "io_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ServingError, match="graph lacks io_spec tensors"):
        load_export(broken)


def test_sentence_pair_models_take_two_strings(tmp_path):
    out = tmp_path / "repo"
    build_model_repository(pair_export(tmp_path / "pairs"), "nli", out)
    ensemble = _parse(out / "nli/config.pbtxt")
    assert [i.name for i in ensemble.input] == ["text", "text_pair"]
    assert dict(ensemble.ensemble_scheduling.step[0].input_map) == {"text": "text", "text_pair": "text_pair"}
    assert [i.name for i in _parse(out / "nli_tokenizer/config.pbtxt").input] == ["text", "text_pair"]
    assert [i.name for i in _parse(out / "nli/configs/local.pbtxt").input] == ["text", "text_pair"]


def _io(tensors):
    return [(t.name, t.data_type, list(t.dims), getattr(t, "label_filename", None)) for t in tensors]


def test_local_entry_is_one_python_model_with_the_ensembles_interface(repo):
    ensemble = _parse(repo / "sentiment/config.pbtxt")
    local = _parse(repo / "sentiment/configs/local.pbtxt")
    assert local.backend == "python" and not local.platform and not local.HasField("ensemble_scheduling")
    assert _io(local.input) == _io(ensemble.input)
    assert _io(local.output) == _io(ensemble.output)
    assert local.max_batch_size == ensemble.max_batch_size
    assert local.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert local.instance_group[0].count == RepositoryOptions().local_instance_count
    params = {k: v.string_value for k, v in local.parameters.items()}
    # The model reads its sibling graph model of the same version (or calls it): it must exist by that name.
    assert (repo / params["graph_model"] / "3" / params["model_file"]).is_file()
    assert (repo / "sentiment/3/tokenizer/tokenizer.json").read_bytes() == \
        (repo / "sentiment_tokenizer/3/tokenizer/tokenizer.json").read_bytes()
    assert json.loads(params["graph_inputs"]) == [
        ["input_ids", "TYPE_INT64"], ["attention_mask", "TYPE_INT64"], ["token_type_ids", "TYPE_INT64"]]
    tokenizer = _parse(repo / "sentiment_tokenizer/config.pbtxt")
    for key in ("max_length", "pad_to_multiple_of", "pad_id"):
        assert params[key] == tokenizer.parameters[key].string_value
    graph = _parse(repo / "sentiment_onnx/configs/local.pbtxt")
    for key in ("intra_op_threads", "pad_values"):
        assert params[key] == graph.parameters[key].string_value


def test_only_the_graph_models_wait_for_a_batch(export_dir, tmp_path):
    options = RepositoryOptions(max_queue_delay_us=700)
    build_model_repository(export_dir, "m", tmp_path / "repo", options=options)
    delays = {str(p.relative_to(tmp_path / "repo")): _parse(p).dynamic_batching.max_queue_delay_microseconds
              for p in (tmp_path / "repo").rglob("*.pbtxt") if _parse(p).platform != "ensemble"}
    assert delays == {"m_onnx/config.pbtxt": 700, "m_onnx/configs/local.pbtxt": 700, "m/configs/local.pbtxt": 700,
                      "m_tokenizer/config.pbtxt": 0, "m_postprocess/config.pbtxt": 0}


def test_local_fast_path_can_be_turned_off(export_dir, tmp_path):
    out = tmp_path / "repo"
    build_model_repository(export_dir, "m", out, options=RepositoryOptions(local_fast_path=False))
    assert not (out / "m/configs").exists()
    assert [p.name for p in (out / "m/1").iterdir()] == ["ENSEMBLE.txt"]
