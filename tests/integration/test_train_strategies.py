"""Every transfer strategy on a small slice of real movie sentences with the real MiniLM."""

import json
import sys
import types

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.helpers import write_movie_slice
from transferkit.errors import TrainingError
from transferkit.io import read_json
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration

TINY = {"max_length": 32, "batch_size": 16, "seed": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_movie_slice(tmp_path_factory.mktemp("movie"), train=64, validation=32, test=32)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "model"
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=out, max_steps=4, llrd=0.9,
                         l2sp=0.01, class_weights="balanced", warmup_ratio=0.25, scheduler="cosine", **TINY)
    return run_training(config)


def _validation_accuracy(model_dir, data):
    """Accuracy of a saved model on the validation split, loaded the way later steps load it."""
    import pyarrow.parquet as pq

    table = pq.read_table(data / "validation.parquet")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(table.column("text").to_pylist(), padding=True, truncation=True, max_length=32,
                      return_tensors="pt")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    labels = torch.tensor(table.column("label").to_pylist())
    return float((predictions == labels).float().mean()), model


def test_full_writes_a_loadable_model_directory_with_summary_curves_and_tensorboard(full_run, data):
    result = full_run
    out = result.out_dir
    assert result.written and out.is_dir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "labels.json", "training_summary.json",
                 "training_report.html", "training_report.md", "training_curves.png", "log_history.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    accuracy, model = _validation_accuracy(out, data)
    assert accuracy == pytest.approx(result.validation_metrics["accuracy"])
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert read_json(out / "labels.json") == ["negative", "positive"]
    summary = read_json(out / "training_summary.json")
    assert summary["strategy"] == "full" and summary["stop_reason"] == "max_steps" == result.stop_reason
    assert summary["global_step"] == 4 and summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["parameters"]["trainable"] == result.trainable_params < summary["parameters"]["total"]
    assert summary["model"]["pooling"] == "mean" and model.config.num_hidden_layers == 7
    assert summary["best"]["metric"] == "accuracy" and summary["best"]["step"] == result.best_step
    assert summary["wall_time_s"] > 0 and summary["train_samples_per_second"] > 0
    assert summary["resolved"]["warmup_steps"] == 1 and summary["resolved"]["class_weights"] is not None
    assert summary["config"]["l2sp"] == 0.01 and "test" not in json.dumps(summary["validation"])
    groups = {g["group"]: g for g in summary["resolved"]["param_groups"]}
    assert groups["layer.4"]["lr"] == pytest.approx(5e-5 * 0.9)
    assert groups["embeddings"]["lr"] == pytest.approx(5e-5 * 0.9**6)
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    # Diagnostics: gradient norm and L2-SP penalty on every step; the penalty grows from 0 as weights drift.
    history = read_json(out / "log_history.json")
    steps = [e for e in history if "loss" in e and "grad_norm" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    penalties = [e["l2sp_penalty"] for e in steps]
    # Step 1 runs at LR 0 (warmup), so the weights first move in step 2.
    assert penalties[0] == penalties[1] == 0.0 and penalties[-1] > penalties[-2] > 0
    html = (out / "training_report.html").read_text()
    assert "data:image/png;base64," in html and "Optimizer parameter groups" in html
    # The default checkpoint directory beside the output is removed after success.
    assert result.checkpoint_dir is None and not out.with_name("model.checkpoints").exists()
    assert json.loads(json.dumps(result.to_dict()))["out_dir"] == str(out)


def test_feature_extraction_cached_features_match_the_naive_frozen_loop(data, tmp_path):
    results = {}
    for cached in (True, False):
        config = TrainConfig(data_dir=data, model="minilm-l6", strategy="feature_extraction",
                             out_dir=tmp_path / f"fe-{cached}", epochs=2, feature_cache=cached, **TINY)
        results[cached] = run_training(config)
    fast, slow = results[True], results[False]
    assert fast.feature_cache["used"] is True and slow.feature_cache == {"used": False}
    assert fast.trainable_params == slow.trainable_params == 384 * 384 + 384 + 2 * 384 + 2  # pooler + classifier
    assert fast.validation_metrics["accuracy"] == slow.validation_metrics["accuracy"]
    assert fast.validation_metrics["loss"] == pytest.approx(slow.validation_metrics["loss"], abs=1e-4)
    assert fast.global_step == slow.global_step == 8
    fast_acc, _ = _validation_accuracy(fast.out_dir, data)
    assert fast_acc == pytest.approx(fast.validation_metrics["accuracy"])
    # The encoder itself was not changed by feature extraction.
    saved = AutoModelForSequenceClassification.from_pretrained(fast.out_dir)
    base = AutoModelForSequenceClassification.from_pretrained(slow.out_dir)
    assert torch.equal(saved.bert.encoder.layer[3].output.dense.weight, base.bert.encoder.layer[3].output.dense.weight)


def test_scratch_trains_a_randomly_initialised_copy(data, tmp_path, full_run):
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="scratch", out_dir=tmp_path / "scratch",
                         max_steps=2, **TINY)
    result = run_training(config)
    scratch = AutoModelForSequenceClassification.from_pretrained(result.out_dir)
    pretrained = AutoModelForSequenceClassification.from_pretrained(full_run.out_dir)
    assert scratch.config.num_hidden_layers == pretrained.config.num_hidden_layers
    a = scratch.bert.embeddings.word_embeddings.weight
    b = pretrained.bert.embeddings.word_embeddings.weight
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-2)
    assert result.trainable_params == full_run.trainable_params
    assert read_json(result.out_dir / "training_summary.json")["strategy"] == "scratch"


def test_off_the_shelf_zero_shot_package_is_a_plain_classifier(data, tmp_path):
    descriptions = tmp_path / "labels.json"
    descriptions.write_text(json.dumps({"negative": "a bad movie", "positive": "a good movie"}))
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="off_the_shelf", out_dir=tmp_path / "zs",
                         label_descriptions=descriptions, max_length=32)
    result = run_training(config)
    assert result.trainable_params == 0 and result.stop_reason == "no_training" and result.global_step == 0
    accuracy, model = _validation_accuracy(result.out_dir, data)
    assert accuracy == pytest.approx(result.validation_metrics["accuracy"])
    assert accuracy > 0.6  # real zero-shot signal on real sentences (chance is ~0.5)
    summary = read_json(result.out_dir / "training_summary.json")
    assert summary["zero_shot"]["argmax_agreement"] == 1.0
    assert summary["zero_shot"]["label_texts"] == {"negative": "a bad movie", "positive": "a good movie"}
    assert type(model).__name__ == "BertForSequenceClassification"


def test_off_the_shelf_reuses_a_head_that_matches(data, tmp_path, full_run):
    config = TrainConfig(data_dir=data, model=str(full_run.out_dir), strategy="off_the_shelf",
                         out_dir=tmp_path / "reuse", max_length=32)
    result = run_training(config)
    assert result.validation_metrics["accuracy"] == pytest.approx(full_run.validation_metrics["accuracy"])
    reused = AutoModelForSequenceClassification.from_pretrained(result.out_dir)
    original = AutoModelForSequenceClassification.from_pretrained(full_run.out_dir)
    assert torch.equal(reused.classifier.weight, original.classifier.weight)
    assert read_json(result.out_dir / "training_summary.json")["resolved"]["mode"] == "existing_head"


def test_early_stopping_stops_and_restores_the_best_checkpoint(data, tmp_path):
    # A constant, high head LR on 64 examples: validation loss improves, then gets worse.
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="feature_extraction", out_dir=tmp_path / "es",
                         head_learning_rate=3e-3, warmup_ratio=0.0, scheduler="constant", max_steps=60, eval_steps=2,
                         early_stopping_patience=2, metric="loss", **TINY)
    result = run_training(config)
    assert result.stop_reason == "early_stopping"
    assert result.global_step == result.best_step + 2 * 2 < 60
    assert result.best_step > 2  # not simply the first evaluation
    history = read_json(result.out_dir / "log_history.json")
    eval_losses = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e and e["step"] <= result.global_step}
    best_step = min(eval_losses, key=eval_losses.get)
    assert best_step == result.best_step
    assert result.validation_metrics["loss"] == pytest.approx(eval_losses[best_step], abs=1e-6)
    assert result.validation_metrics["loss"] < eval_losses[result.global_step]


def test_preserve_source_runs_before_publishing_and_its_summary_is_recorded(data, tmp_path, monkeypatch):
    calls = []

    def preserve_source(model_dir, *, base, data_dir, source, min_retention):
        assert model_dir.name.startswith(".zs.tmp-")  # the unpublished temporary output
        assert (model_dir / "model.safetensors").is_file()
        calls.append((base, data_dir, source, min_retention))
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        with torch.no_grad():
            model.classifier.weight.neg_()  # a visible change: predictions flip
        model.save_pretrained(model_dir)
        return {"retention": 0.8, "alpha": 0.5}

    stub = types.SimpleNamespace(preserve_source=preserve_source)
    monkeypatch.setitem(sys.modules, "transferkit.train.preserve", stub)
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="off_the_shelf", out_dir=tmp_path / "zs",
                         max_length=32, preserve_source=True, min_retention=0.7)
    result = run_training(config)
    assert calls == [("minilm-l6", data, None, 0.7)]
    summary = read_json(result.out_dir / "training_summary.json")
    assert summary["preserve_source"] == {"retention": 0.8, "alpha": 0.5} == result.preserve_source
    before = summary["validation_before_preserve"]["accuracy"]
    assert summary["validation"]["accuracy"] == pytest.approx(1.0 - before)
    accuracy, _ = _validation_accuracy(result.out_dir, data)
    assert accuracy == pytest.approx(summary["validation"]["accuracy"])

    monkeypatch.setitem(sys.modules, "transferkit.train.preserve", None)
    out = tmp_path / "missing"
    with pytest.raises(TrainingError, match="--preserve-source: the forgetting mitigation .* is not available"):
        run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="off_the_shelf", out_dir=out,
                                 max_length=32, preserve_source=True))
    assert not out.exists() and not list(tmp_path.glob(".missing.tmp-*"))
