"""Strategy lora: option validation and target-module resolution (a tiny random Llama built here)."""

import pytest

from transferkit.errors import ConfigError, ModelError
from transferkit.train import TrainConfig
from transferkit.train.config import config_to_cli_args
from transferkit.train.lora import check_quantize_base, resolve_target_modules


def _config(tmp_path, **kwargs):
    return TrainConfig(data_dir=tmp_path / "data", model="minilm-l6", out_dir=tmp_path / "out", **kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"strategy": "full", "lora_rank": 4}, "lora_rank"),
    ({"strategy": "feature_extraction", "dora": True}, "dora"),
    ({"strategy": "full", "lora_target": "query"}, "lora_target"),
    ({"strategy": "full", "quantize_base": "4bit"}, "quantize_base"),
    ({"strategy": "lora", "lora_rank": 0}, "lora_rank"),
    ({"strategy": "lora", "lora_rank": -2}, "lora_rank"),
    ({"strategy": "lora", "lora_alpha": 0.0}, "lora_alpha"),
    ({"strategy": "lora", "lora_dropout": 1.0}, "lora_dropout"),
    ({"strategy": "lora", "lora_scale": 1.5}, "lora_scale"),
    ({"strategy": "lora", "lora_scale": 0.0}, "lora_scale"),
    ({"strategy": "lora", "lora_target": "query,,value"}, "lora_target"),
    ({"strategy": "lora", "quantize_base": "2bit"}, "quantize_base"),
    ({"strategy": "lora", "l2sp": 0.1}, "l2sp"),
])
def test_bad_lora_options_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:") as info:
        _config(tmp_path, **kwargs)
    assert "\n" not in str(info.value)


def test_lora_options_round_trip_through_the_command_line(tmp_path):
    config = _config(tmp_path, strategy="lora", lora_rank=4, lora_alpha=8.0, lora_target="all-linear", dora=True,
                     lora_scale=0.5)
    args = config_to_cli_args(config)
    assert args[args.index("--lora-rank") + 1] == "4" and "--dora" in args
    assert args[args.index("--lora-target") + 1] == "all-linear" and args[args.index("--lora-scale") + 1] == "0.5"
    assert config.lora_targets == ["all-linear"]
    assert _config(tmp_path, strategy="lora", lora_target=" query , value").lora_targets == ["query", "value"]


def test_quantized_base_is_refused_without_cuda():
    with pytest.raises(ConfigError, match="^quantize_base: 4bit .*CUDA"):
        check_quantize_base("4bit", "cpu")
    check_quantize_base("none", "cpu")
    check_quantize_base("8bit", "cuda")


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from transferkit.train.modeling import layer_layout

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=2, pad_token_id=0))
    return model, layer_layout(model)


def test_llama_defaults_to_every_attention_projection(tiny_llama):
    model, layout = tiny_llama
    targets = resolve_target_modules(model, None, layout.classify)
    assert sorted(targets) == sorted(f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo")


def test_all_linear_covers_the_base_but_never_the_head(tiny_llama):
    model, layout = tiny_llama
    targets = resolve_target_modules(model, ["all-linear"], layout.classify)
    assert len(targets) == 2 * 7 and not any(t.startswith("score") for t in targets)
    assert "model.layers.1.mlp.down_proj" in targets


def test_unknown_target_names_the_modules_that_exist(tiny_llama):
    model, layout = tiny_llama
    with pytest.raises(ConfigError, match=r"^lora_target: no linear module 'query' .*down_proj, gate_proj, "
                                          r"k_proj, o_proj, q_proj, up_proj, v_proj") as info:
        resolve_target_modules(model, ["q_proj", "query"], layout.classify)
    assert "\n" not in str(info.value)


def test_a_model_without_a_model_type_has_no_default_targets(tiny_llama):
    import torch.nn as nn

    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="no linear layers to adapt"):
        resolve_target_modules(cnn, None, lambda name: ("head", None))
