"""The real SmolLM2-135M summarizing real aclsum abstracts: LoRA for two steps, then ROUGE against the lead and
zero-shot baselines. Small on purpose (a few pairs, 8 new tokens); benchmarks/summarization.py measures quality."""

import pyarrow.parquet as pq
import pytest

from tests.generative import aclsum_pairs
from transferkit.evaluate import EvaluateConfig, evaluate_model
from transferkit.io import read_json
from transferkit.models.catalog import resolve_model
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def summarizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2-aclsum")
    data = aclsum_pairs(resolve_model("smollm2-135m").path, root / "pairs", rows=15)
    out = root / "model"
    run_training(TrainConfig(data_dir=data, model="smollm2-135m", strategy="lora", out_dir=out, max_steps=2,
                             batch_size=2, max_length=256, learning_rate=1e-3, max_new_tokens=8, seed=0))
    return data, out


def test_lora_trains_only_adapters_and_keeps_the_tied_lm_head(summarizer):
    _, out = summarizer
    summary = read_json(out / "training_summary.json")
    assert summary["lora"]["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    # rank 8 on q/k/v/o of 30 layers: 921,600 weights; the 28M-weight tied LM head stays frozen.
    assert summary["parameters"]["trainable"] == 921_600 and summary["global_step"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert read_json(out / "generation_config.json")["max_new_tokens"] == 8


def test_real_model_summaries_are_scored_against_lead_and_zero_shot(summarizer, tmp_path):
    data, out = summarizer
    result = evaluate_model(EvaluateConfig(model_dir=out, data_dir=data, out_dir=tmp_path / "eval",
                                           baseline="smollm2-135m", progress=False))
    test_pairs = pq.read_metadata(data / "test.parquet").num_rows
    assert result.n_examples == test_pairs > 0
    assert result.primary_metric == "rougeL" and result.baseline["mode"] == "zero_shot"
    predictions = pq.read_table(result.predictions_path).to_pylist()
    assert all(row["generated"] and row["zero_shot"] for row in predictions)
    # A real instruction-tuned LM asked to summarize a real abstract reuses its words: ROUGE-1 above zero for both.
    assert 0.05 < result.scalars["rouge1"] <= 1 and 0.05 < result.baseline["scalars"]["rouge1"] <= 1
    assert result.extra["lead_baseline"]["scalars"]["rougeL"] > 0
    assert (tmp_path / "eval" / "report.html").read_text().count("<tr") >= test_pairs
