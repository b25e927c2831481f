"""Strategy lora on real MiniLM and on a tiny random Llama (built here), on a small slice of real movie sentences.

The saved directory must be a plain merged transformers model (what evaluate/export/deploy load) and the
adapter in ``adapter/`` must reproduce it: merged weight - base weight == scale * (alpha / r) * B @ A.
"""

import sys
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from tests.helpers import write_movie_slice, write_tiny_llama
from transferkit.errors import ConfigError
from transferkit.io import read_json
from transferkit.models.catalog import resolve_model
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration

TINY = {"max_length": 32, "batch_size": 16, "seed": 0, "max_steps": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_movie_slice(tmp_path_factory.mktemp("movie"), train=48, validation=32, test=16)


@pytest.fixture(scope="module")
def minilm_lora(data, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("lora") / "model"
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="lora", out_dir=out, lora_rank=4,
                         lora_alpha=8.0, lora_scale=0.5, **TINY)
    return run_training(config)


def _delta(adapter, prefix, scale):
    a = adapter[f"base_model.model.{prefix}.lora_A.weight"]
    b = adapter[f"base_model.model.{prefix}.lora_B.weight"]
    return scale * b @ a


def test_minilm_lora_writes_a_merged_model_and_its_adapter(minilm_lora, data):
    out = minilm_lora.out_dir
    summary = read_json(out / "training_summary.json")
    lora = summary["lora"]
    assert lora["target_modules"] == ["query", "value"] and lora["adapted_modules"] == 12 and lora["rank"] == 4
    assert summary["parameters"]["trainable_fraction"] < 0.02
    assert summary["memory"]["peak_rss_mb"] > 100
    # The head (pooler + classifier) trains fully beside the adapters, at the head LR.
    groups = {g["group"]: g for g in summary["resolved"]["param_groups"]}
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["layer.5"]["lr"] == pytest.approx(5e-4)
    merged = load_file(out / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in merged)
    adapter_config = read_json(out / "adapter" / "adapter_config.json")
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == pytest.approx(8.0 * 0.5)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    base = load_file(resolve_model("minilm-l6").path / "model.safetensors")
    name = "encoder.layer.3.attention.self.query"
    base_key = next(k for k in base if k.endswith(f"{name}.weight"))
    expected = base[base_key] + _delta(adapter, f"bert.{name}", 0.5 * 8.0 / 4)
    assert torch.allclose(merged[f"bert.{name}.weight"], expected, atol=1e-6)
    assert not torch.allclose(merged[f"bert.{name}.weight"], base[base_key], atol=1e-6)
    key = "bert.encoder.layer.3.attention.self.key.weight"
    assert torch.equal(merged[key], base[next(k for k in base if k.endswith("layer.3.attention.self.key.weight"))])
    assert "base_model.model.classifier.weight" in adapter
    # A scaled merge is not the model that was validated during training: validation is measured again.
    assert "validation_unscaled" in lora and summary["validation"] == minilm_lora.validation_metrics
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "BertForSequenceClassification"
    report = (out / "training_report.md").read_text()
    assert "| LoRA | rank 4, alpha 8 on 12 modules (query, value)" in report and "MB RSS" in report


def test_lora_target_that_does_not_exist_is_one_line_and_writes_nothing(data, tmp_path):
    out = tmp_path / "model"
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="lora", out_dir=out, lora_target="q_proj",
                         **TINY)
    with pytest.raises(ConfigError, match=r"^lora_target: no linear module 'q_proj' .*query.*value"):
        run_training(config)
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


def test_tiny_llama_lora_adapts_every_attention_projection(data, tiny_llama_dir, tmp_path, one_torch_thread):
    out = tmp_path / "model"
    result = run_training(TrainConfig(data_dir=data, model=str(tiny_llama_dir), strategy="lora", out_dir=out,
                                      dora=True, **TINY))
    summary = read_json(out / "training_summary.json")
    assert summary["lora"]["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert summary["lora"]["dora"] and summary["model"]["model_type"] == "llama"
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id is not None
    assert not any("lora" in k for k in model.state_dict())
    assert result.trainable_params < 0.2 * result.total_params
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_magnitude_vector") for k in adapter)
    assert "base_model.model.score.weight" in adapter


def test_adapter_directory_loads_with_peft_and_reproduces_the_merged_model(data, tiny_llama_dir, tmp_path,
                                                                            one_torch_thread):
    from peft import PeftModel
    from transformers import AutoTokenizer

    out = tmp_path / "model"
    run_training(TrainConfig(data_dir=data, model=str(tiny_llama_dir), strategy="lora", out_dir=out,
                             lora_target="all-linear", **TINY))
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2)
    base.config.pad_token_id = merged.config.pad_token_id
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a gripping, funny film", "dull and far too long", "fine"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        expected, actual = merged(**batch).logits, adapted(**batch).logits
    assert torch.allclose(actual, expected, atol=1e-5)


def test_lora_trained_llama_classifier_exports_with_parity(data, tiny_llama_dir, tmp_path, one_torch_thread):
    """The merged decoder classifier written by strategy lora exports to ONNX like any other model."""
    import onnxruntime as ort

    from transferkit.export import ExportConfig, IOSpec, export_model

    out = tmp_path / "model"
    run_training(TrainConfig(data_dir=data, model=str(tiny_llama_dir), strategy="lora", out_dir=out, **TINY))
    result = export_model(ExportConfig(out, data, tmp_path / "onnx", max_length=32, threads=1, max_drop=100,
                                       latency_runs=0, throughput_runs=0))
    assert result.parity_max_abs_diff <= 1e-4
    assert all(c.labels_agree for c in result.parity_cases) and len(result.parity_cases) >= 4
    spec = IOSpec.load(result.out_dir)
    assert spec.model_type == "llama" and [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    session = ort.InferenceSession(str(result.out_dir / "model.int8.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_preserve_source_on_a_decoder_is_refused_before_training(data, tiny_llama_dir, tmp_path):
    out = tmp_path / "model"
    config = TrainConfig(data_dir=data, model=str(tiny_llama_dir), strategy="lora", out_dir=out,
                         preserve_source=True, **TINY)
    with pytest.raises(ConfigError, match=r"^preserve_source: .* is a decoder \(llama\): use --strategy lora") as info:
        run_training(config)
    assert "\n" not in str(info.value) and not out.exists()


def test_preserve_source_on_a_lora_model_marks_the_adapter_as_not_the_served_weights(data, tmp_path, monkeypatch,
                                                                                     one_torch_thread):
    def preserve_source(model_dir, *, base, data_dir, source, min_retention):
        assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()  # written before the mitigation
        return {"changed": True, "retention": 0.71, "split_layer": 4, "alpha": 0.25}

    stub = types.SimpleNamespace(preserve_source=preserve_source)
    monkeypatch.setitem(sys.modules, "transferkit.train.preserve", stub)
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="lora", out_dir=tmp_path / "model",
                         preserve_source=True, min_retention=0.7, **TINY)
    summary = read_json(run_training(config).out_dir / "training_summary.json")
    assert summary["lora"]["adapter_matches_model"] is False and summary["preserve_source"]["changed"] is True
