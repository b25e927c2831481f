"""`transferkit prune` end to end: real MiniLM on real movie sentences, a tiny ViT on real digits, bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import MOVIE_LABELS, prepare_image_data, write_image_model, write_movie_slice
from transferkit.cli.main import app
from transferkit.models.loading import load_sequence_classifier, load_tokenizer

pytestmark = pytest.mark.integration
runner = CliRunner()
FAST = ["--max-steps", "2", "--importance-samples", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-text")
    write_movie_slice(root / "data", train=64, validation=16, test=32)
    torch.manual_seed(0)
    model = load_sequence_classifier("minilm-l6", MOVIE_LABELS)
    with torch.no_grad():  # a seeded, non-trivial head so that both classes get predicted
        model.classifier.weight.normal_(0, 0.5)
    model.save_pretrained(root / "model")
    load_tokenizer("minilm-l6").save_pretrained(root / "model")
    (root / "model" / "labels.json").write_text(json.dumps(MOVIE_LABELS))
    return root


def test_pruned_minilm_is_a_normal_model_directory_that_exports_with_parity(text):
    from transferkit.evaluate import EvaluateConfig, evaluate_model
    from transferkit.export import ExportConfig, export_model

    out = text / "pruned"
    result = runner.invoke(app, ["prune", "--model", str(text / "model"), "--data", str(text / "data"), "--out",
                                 str(out), "--keep-layers", "4", "--keep-ffn", "768", "--max-length", "64", *FAST,
                                 "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["intermediate_size"] == 768
    summary = json.loads((out / "prune_summary.json").read_text())
    assert summary["plan"]["keep_layers"] == 4 and summary["recovery"]["steps"] == 2
    assert summary["reload_max_abs_diff"] <= 1e-4
    assert 0.3 < summary["kept_parameter_fraction"] < 0.5  # 4/6 layers x (attention + half the FFN)
    assert (out / "prune_report.html").is_file() and (out / "tokenizer.json").is_file()
    assert not list(text.glob(".pruned.tmp-*"))
    reloaded = load_sequence_classifier(out)
    assert len(reloaded.bert.encoder.layer) == 4
    exported = export_model(ExportConfig(model_dir=out, data_dir=text / "data", out_dir=text / "onnx",
                                         max_drop=100.0, latency_runs=0, throughput_runs=0, max_eval_samples=16,
                                         agreement_sample_size=0))
    assert exported.parity_max_abs_diff < 1e-3
    assert {"fp32", "int8"} <= set(exported.variants)
    evaluated = evaluate_model(EvaluateConfig(model_dir=out, data_dir=text / "data", out_dir=text / "eval",
                                              progress=False))
    assert 0 <= evaluated.scalars["accuracy"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "error: sparsity: 1.5 must be a fraction strictly between 0 and 1"),
    (["--sparsity", "0"], "error: sparsity: 0.0 must be a fraction strictly between 0 and 1"),
    (["--keep-layers", "7"], "error: keep_layers: 7 is more than the 6 encoder layers"),
    (["--keep-layers", "0"], "error: keep_layers: 0 must be a whole number >= 1"),
    (["--keep-heads", "6"], "error: keep_heads: 6 < 12 cannot be saved"),
    (["--keep-ffn", "2000"], "error: keep_ffn: 2000 is more than the 1536"),
])
def test_bad_targets_fail_with_one_line_and_write_nothing(text, args, message):
    out = text / "bad"
    result = runner.invoke(app, ["prune", "--model", str(text / "model"), "--data", str(text / "data"), "--out",
                                 str(out), *args, *FAST])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message)
    assert not out.exists() and not list(text.glob(".bad.*"))


def test_a_teacher_with_other_labels_is_refused(text, tmp_path):
    data = write_movie_slice(tmp_path / "data", train=8, validation=4, test=4)
    (data / "labels.json").write_text(json.dumps(["positive", "negative"]))
    result = runner.invoke(app, ["prune", "--model", str(text / "model"), "--data", str(data), "--out",
                                 str(tmp_path / "out"), "--sparsity", "0.5", *FAST])
    assert result.exit_code == 2
    assert "labels ['negative', 'positive']; the data in" in result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepare_image_data(tmp_path_factory.mktemp("prune-digits") / "data", max_rows=240)


def test_vit_prunes_and_a_cnn_is_refused(digits, tmp_path):
    from transformers import AutoModelForImageClassification

    from tests.helpers import write_tiny_transformers_image_model
    from transferkit.train import run_training
    from transferkit.train.config import TrainConfig

    base = write_tiny_transformers_image_model("vit", tmp_path)
    run_training(TrainConfig(data_dir=digits, model=str(base), strategy="full", max_steps=2,
                             out_dir=tmp_path / "vit-ft"))
    result = runner.invoke(app, ["prune", "--model", str(tmp_path / "vit-ft"), "--data", str(digits), "--out",
                                 str(tmp_path / "vit-pruned"), "--keep-layers", "1", "--keep-ffn", "16", *FAST])
    assert result.exit_code == 0, result.output
    pruned = AutoModelForImageClassification.from_pretrained(tmp_path / "vit-pruned")
    assert pruned.config.num_hidden_layers == 1 and pruned.config.intermediate_size == 16
    assert pruned.vit.layers[0].mlp.fc2.in_features == 16

    labels = json.loads((digits / "labels.json").read_text())
    write_image_model(tmp_path / "cnn", labels)
    result = runner.invoke(app, ["prune", "--model", str(tmp_path / "cnn"), "--data", str(digits), "--out",
                                 str(tmp_path / "cnn-pruned"), "--sparsity", "0.3", *FAST])
    assert result.exit_code == 2
    assert "cannot be pruned; structured pruning supports transformer encoders" in result.output
    assert not (tmp_path / "cnn-pruned").exists()


def test_pipeline_prune_step_passes_through_when_off_and_prunes_within_budget(text, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from transferkit.errors import ConfigError
    from transferkit.prune.gate import prune_step

    off = prune_step(text / "model", text / "data", tmp_path / "off", enabled=False, sparsity=0.5)
    assert not off.pruned and "off" in off.reason and off.report_html.is_file()
    assert (tmp_path / "off" / "model.safetensors").read_bytes() == (text / "model" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="^sparsity: 2.0"):
        prune_step(text / "model", text / "data", tmp_path / "typo", enabled=False, sparsity=2.0)
    assert not (tmp_path / "typo").exists()

    # A narrow BERT with MiniLM's vocabulary and tokenizer: the same code path as MiniLM, in seconds.
    torch.manual_seed(0)
    tiny = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2, id2label=dict(enumerate(MOVIE_LABELS)), label2id={n: i for i, n in enumerate(MOVIE_LABELS)}))
    tiny.save_pretrained(tmp_path / "tiny")
    load_tokenizer("minilm-l6").save_pretrained(tmp_path / "tiny")
    (tmp_path / "tiny" / "labels.json").write_text(json.dumps(MOVIE_LABELS))
    on = prune_step(tmp_path / "tiny", text / "data", tmp_path / "on", enabled=True, max_drop=100.0,
                    sparsity=0.2, max_steps=1, importance_samples=16, batch_size=16, max_length=32, compare=True)
    assert on.pruned and on.metrics["pruned"] == 1.0 and 0.7 < on.metrics["kept_parameter_fraction"] < 0.9
    # The comparison table: both models exported (parity-gated), every variant's numbers in the metrics.
    assert on.metrics["pruned_int8_size_mb"] < on.metrics["pruned_fp32_size_mb"] < on.metrics["fp32_size_mb"]
    assert sum(on.metrics[f"{v}_pareto"] for v in ("fp32", "int8", "pruned_fp32", "pruned_int8")) >= 1
    sizes = {v: on.metrics[f"{v}_size_mb"] for v in ("fp32", "int8", "pruned_fp32", "pruned_int8")}
    smallest = min(sizes, key=sizes.get)
    if sorted(sizes.values())[0] < sorted(sizes.values())[1]:  # a strictly smallest variant is never dominated
        assert on.metrics[f"{smallest}_pareto"] == 1.0, sizes
    html = on.report_html.read_text()
    assert "Pareto front" in html and "pruned int8" in html
    assert json.loads((tmp_path / "on" / "config.json").read_text())["intermediate_size"] < 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
