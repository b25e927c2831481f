"""Strategy distill: the real MiniLM's bottom layers learn a fine-tuned MiniLM teacher on real movie sentences."""

import json

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from tests.helpers import write_movie_slice
from transferkit.cli.main import app
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A real fine-tuned teacher: MiniLM with a head trained on cached features (seconds on CPU)."""
    root = tmp_path_factory.mktemp("distill")
    data = write_movie_slice(root / "data", train=96, validation=32, test=64)
    run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="feature_extraction", out_dir=root / "teacher",
                             max_steps=30, batch_size=16, max_length=32, seed=0))
    return root


def _predictions(model_dir, texts):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model, model(**batch).logits.argmax(-1)


def test_distill_trains_a_shallower_loadable_student_that_agrees_with_its_teacher(teacher):
    root = teacher
    out = root / "student"
    result = runner.invoke(app, [
        "train", "--data", str(root / "data"), "--model", "minilm-l6", "--strategy", "distill", "--teacher",
        str(root / "teacher"), "--student-layers", "3", "--distill-alpha", "0.9", "--distill-temperature", "2",
        "--max-steps", "32", "--batch-size", "16", "--max-length", "32", "--learning-rate", "1e-4",
        "--seed", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["strategy"] == "distill"
    distillation = summary["resolved"]["distillation"]
    assert distillation["student_layers"] == 3 and distillation["base_layers"] == 6
    assert distillation["student_parameters"] < distillation["base_parameters"]

    texts = pq.read_table(root / "data" / "test.parquet").column("text").to_pylist()
    teacher_model, teacher_pred = _predictions(root / "teacher", texts)
    student_model, student_pred = _predictions(out, texts)  # loadable as any model directory
    assert student_model.config.num_hidden_layers < teacher_model.config.num_hidden_layers
    assert len(student_model.bert.encoder.layer) == 3 + 1  # 3 kept layers + transferkit's fixed mean-pooling layer
    assert json.loads((out / "labels.json").read_text()) == json.loads((root / "teacher" / "labels.json").read_text())

    agreement = float((student_pred == teacher_pred).float().mean())
    # Chance: the agreement of independent predictions with the same class frequencies as the two models'.
    chance = sum(float((teacher_pred == c).float().mean()) * float((student_pred == c).float().mean())
                 for c in (0, 1))
    # Measured: 0.64 against a chance of 0.47 (32 steps).
    assert agreement > max(chance, 0.5) + 0.05, (agreement, chance)
    assert not list(root.glob(".student*"))


def test_the_student_evaluates_exports_and_checks_forgetting_unchanged(teacher):
    from transferkit.evaluate import EvaluateConfig, evaluate_model
    from transferkit.evaluate.forgetting import ForgettingConfig, check_forgetting
    from transferkit.export import ExportConfig, export_model

    root = teacher
    out = root / "student-2"
    run_training(TrainConfig(data_dir=root / "data", model="minilm-l6", strategy="distill", teacher=root / "teacher",
                             student_layers=2, max_steps=2, batch_size=16, max_length=32, out_dir=out))
    exported = export_model(ExportConfig(model_dir=out, data_dir=root / "data", out_dir=root / "onnx",
                                         max_drop=100.0, latency_runs=0, throughput_runs=0, max_eval_samples=16,
                                         agreement_sample_size=0))
    assert exported.parity_max_abs_diff < 1e-3 and {"fp32", "int8"} <= set(exported.variants)
    evaluated = evaluate_model(EvaluateConfig(model_dir=out, data_dir=root / "data", out_dir=root / "eval",
                                              progress=False))
    assert 0 <= evaluated.scalars["accuracy"] <= 1
    forgetting = check_forgetting(ForgettingConfig(base="minilm-l6", model=out, out_dir=root / "forgetting",
                                                   progress=False))
    # The base's Lee similarity Pearson (DESIGN.md: 0.656) against the 2-layer student's own encoder.
    assert forgetting.base_score == pytest.approx(0.656, abs=0.01) and -1 <= forgetting.model_score <= 1
    assert forgetting.retention == pytest.approx(forgetting.model_score / forgetting.base_score)


def test_a_vit_student_distils_from_a_vit_teacher_and_a_cnn_base_is_refused(tmp_path):
    from transformers import AutoModelForImageClassification

    from tests.helpers import prepare_image_data, write_image_model, write_tiny_transformers_image_model

    digits = prepare_image_data(tmp_path / "digits", max_rows=240)
    base = write_tiny_transformers_image_model("vit", tmp_path)
    run_training(TrainConfig(data_dir=digits, model=str(base), strategy="full", max_steps=2, out_dir=tmp_path / "t"))
    teacher_layers = AutoModelForImageClassification.from_pretrained(tmp_path / "t").config.num_hidden_layers
    result = runner.invoke(app, ["train", "--data", str(digits), "--model", str(base), "--strategy", "distill",
                                 "--teacher", str(tmp_path / "t"), "--max-steps", "2", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    student = AutoModelForImageClassification.from_pretrained(tmp_path / "s")
    assert student.config.num_hidden_layers == max(1, teacher_layers // 2) < teacher_layers

    cnn = write_image_model(tmp_path / "cnn", json.loads((digits / "labels.json").read_text()))
    result = runner.invoke(app, ["train", "--data", str(digits), "--model", str(cnn), "--strategy", "distill",
                                 "--teacher", str(tmp_path / "t"), "--max-steps", "2", "--out", str(tmp_path / "c")])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no transformer encoder layers" in errors[0], result.output
    assert not (tmp_path / "c").exists()
