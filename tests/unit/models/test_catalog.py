import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.errors import ModelError, UnsafeModelError
from transferkit.models.catalog import CATALOG, resolve_model

runner = CliRunner()


def test_minilm_resolves_offline_with_safetensors():
    resolved = resolve_model("minilm-l6")
    assert (resolved.path / "model.safetensors").is_file()
    assert resolved.model_type == "bert"
    assert resolved.is_embedding_model
    assert resolved.head_labels is None


def test_catalog_parameter_count_matches_real_weights():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve_model("minilm-l6").path)
    actual = sum(p.numel() for p in model.parameters())
    assert abs(actual - CATALOG["minilm-l6"].parameters) / actual < 0.01


def _copy_config_only(src: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path):
    model_dir = _copy_config_only(resolve_model("minilm-l6").path, tmp_path / "m")
    (model_dir / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeModelError, match="pytorch_model.bin"):
        resolve_model(model_dir)
    assert resolve_model(model_dir, allow_pickle=True).path == model_dir.resolve()


def test_remote_code_is_refused_unless_trusted(tmp_path):
    src = resolve_model("minilm-l6").path
    model_dir = _copy_config_only(src, tmp_path / "m")
    (model_dir / "model.safetensors").symlink_to(src / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeModelError, match="trust-remote-code"):
        resolve_model(model_dir)
    assert resolve_model(model_dir, trust_remote_code=True).config["auto_map"]


def test_unresolvable_references():
    with pytest.raises(ModelError, match="not a catalog name"):
        resolve_model("no-such-model")


def test_efficientnet_lite0_resolves_to_packaged_weights():
    resolved = resolve_model("efficientnet-lite0")
    assert (resolved.path / CATALOG["efficientnet-lite0"].packaged_weights).is_file()
    assert resolved.config["transferkit_architecture"] == "efficientnet-lite0"
    assert not resolved.is_embedding_model


def test_directory_without_weights(tmp_path):
    _copy_config_only(resolve_model("minilm-l6").path, tmp_path / "m")
    with pytest.raises(ModelError, match="no weights found"):
        resolve_model(tmp_path / "m")


def test_models_list_and_show_cli():
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    names = [entry["name"] for entry in json.loads(result.output)]
    assert names == ["minilm-l6", "efficientnet-lite0", "smollm2-135m"]
    result = runner.invoke(app, ["models", "show", "minilm-l6", "--json"])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["forgetting_source"] == "builtin:lee-similarity"
    assert Path(shown["path"]).is_dir()


def test_models_show_unknown_exits_nonzero_with_one_line():
    result = runner.invoke(app, ["models", "show", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "nope" in result.output


def test_smollm2_show_says_the_weights_were_4bit_and_expanded():
    result = runner.invoke(app, ["models", "show", "smollm2-135m", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert "4-bit" in shown["weights_note"] and "fp32" in shown["weights_note"]
    assert shown["task"] == "text-classification" and shown["pooling"] == "cls"


def test_missing_or_truncated_gguf_is_one_line(tmp_path):
    from transferkit.models.gguf import SMOLLM2_GGUF, check_gguf, find_smollm2_gguf

    with pytest.raises(ModelError, match="GGUF file is missing"):
        check_gguf(tmp_path / SMOLLM2_GGUF)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + b"0" * 64)
    with pytest.raises(ModelError, match="not a GGUF file"):
        check_gguf(not_gguf)
    real = find_smollm2_gguf()
    truncated = tmp_path / SMOLLM2_GGUF
    with real.open("rb") as source:
        truncated.write_bytes(source.read(real.stat().st_size // 2))
    with pytest.raises(ModelError, match=r"truncated GGUF") as info:
        check_gguf(truncated)
    assert "\n" not in str(info.value)
    check_gguf(real)


def test_convert_refuses_a_truncated_gguf_and_writes_nothing(tmp_path):
    from transferkit.models.gguf import SMOLLM2_GGUF, convert_gguf, find_smollm2_gguf

    real = find_smollm2_gguf()
    truncated = tmp_path / SMOLLM2_GGUF
    with real.open("rb") as source:
        truncated.write_bytes(source.read(4096))
    with pytest.raises(ModelError, match="GGUF"):
        convert_gguf(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
