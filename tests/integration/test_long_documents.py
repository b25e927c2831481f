"""Long documents with the real MiniLM: max_length auto, head_tail truncation and chunk windows in training and
evaluation (documents of filler news sentences around one labelled movie sentence)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.helpers import write_long_document_slice
from transferkit.errors import ConfigError
from transferkit.evaluate.evaluation import EvaluateConfig, evaluate_model
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_long_document_slice(tmp_path_factory.mktemp("long"))


@pytest.fixture(scope="module")
def chunk_run(data, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("chunk") / "model"
    config = TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=out, max_steps=3, max_length="32",
                         long_documents="chunk", stride=6, aggregation="max", batch_size=16, seed=0)
    return run_training(config)


def test_auto_max_length_is_measured_on_the_training_split_and_saved(data, tmp_path, one_torch_thread):
    out = tmp_path / "model"
    run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=out, max_steps=1,
                             truncation="head_tail", batch_size=16, seed=0))
    tokenizer = AutoTokenizer.from_pretrained(out)
    lengths = [len(ids) for ids in tokenizer(pq.read_table(data / "train.parquet").column("text").to_pylist())[
        "input_ids"]]
    expected = min(int(np.ceil(np.percentile(lengths, 95) / 8) * 8), 512)
    saved = json.loads((out / "text_inputs.json").read_text())
    assert saved == {"max_length": expected, "truncation": "head_tail", "long_documents": "truncate", "stride": 0,
                     "aggregation": "mean", "special_tokens": 2}
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resolved"]["max_length"] == expected and summary["resolved"]["max_length_source"] == "auto"


def test_chunked_training_uses_every_window_with_the_document_label(chunk_run, data, tmp_path):
    summary = json.loads((chunk_run.out_dir / "training_summary.json").read_text())
    assert summary["resolved"]["long_documents"] == "chunk" and summary["resolved"]["stride"] == 6
    assert summary["resolved"]["aggregation"] == "max"
    saved = json.loads((chunk_run.out_dir / "text_inputs.json").read_text())
    assert saved["long_documents"] == "chunk" and saved["max_length"] == 32
    # The selected model's validation metrics are per document (the window ones are kept beside them), the same
    # number as the evaluate step on the validation split.
    validation = summary["validation"]
    assert "window_accuracy" in validation
    evaluate_model(EvaluateConfig(model_dir=chunk_run.out_dir, data_dir=data, out_dir=tmp_path / "val",
                                  split="validation", progress=False))
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert validation["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    # Evaluations during training are scored per document too, so the best checkpoint is chosen on documents.
    history = json.loads((chunk_run.out_dir / "log_history.json").read_text())
    evaluations = [entry for entry in history if "eval_accuracy" in entry]
    assert evaluations and all("eval_window_accuracy" in entry for entry in evaluations)
    best = next(entry for entry in evaluations if entry["step"] == summary["best"]["step"])
    assert best["eval_accuracy"] == pytest.approx(validation["accuracy"], abs=1e-9)


def test_document_loss_trains_on_whole_documents_per_batch(data, tmp_path, one_torch_thread):
    out = tmp_path / "model"
    run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=out, epochs=1.0,
                             max_length="32", long_documents="chunk", stride=6, aggregation="max",
                             chunk_loss="document", batch_size=16, seed=0))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resolved"]["chunk_loss"] == "document"
    assert summary["global_step"] == 3  # one epoch of 48 documents in batches of 16 documents (not of windows)
    assert "window_accuracy" in summary["validation"]  # validation is still scored per document
    assert json.loads((out / "text_inputs.json").read_text())["aggregation"] == "max"


def test_evaluation_aggregates_window_logits_per_document(chunk_run, data, tmp_path):
    evaluate_model(EvaluateConfig(model_dir=chunk_run.out_dir, data_dir=data, out_dir=tmp_path / "eval",
                                           progress=False))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["text_inputs"]["long_documents"] == "chunk"
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "windows of 32 tokens overlapping by 6, max of window logits" in report
    # An independent computation: every 30-token window (+[CLS]/[SEP]), stepping by 24, max of logits.
    model = AutoModelForSequenceClassification.from_pretrained(chunk_run.out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(chunk_run.out_dir)
    table = pq.read_table(data / "test.parquet")
    predicted = []
    for text in table.column("text").to_pylist():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        starts = list(range(0, max(len(ids) - 30, 0) + 24, 24))
        starts = [s for s in starts if s == 0 or s + 30 - 24 < len(ids)]
        windows = [[tokenizer.cls_token_id, *ids[s:s + 30], tokenizer.sep_token_id] for s in starts]
        assert windows[-1][-2] == ids[-1]
        with torch.no_grad():
            batch = tokenizer.pad({"input_ids": windows}, return_tensors="pt")
            logits = model(**batch).logits
        predicted.append(int(logits.max(dim=0).values.argmax()))
    rows = pq.read_table(tmp_path / "eval" / "predictions.parquet").column("predicted").to_pylist()
    assert rows == [["negative", "positive"][i] for i in predicted]
    labels = table.column("label").to_pylist()
    assert metrics["accuracy"] == pytest.approx(float(np.mean(np.asarray(predicted) == np.asarray(labels))))


def test_bad_long_document_options_are_one_line_errors(data, tmp_path):
    with pytest.raises(ConfigError, match=r"^stride: 30 overlapping tokens must be below the window of 30 text "
                                          r"tokens \(max_length 32 minus 2 special tokens\)$"):
        run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=tmp_path / "m",
                                 max_steps=1, max_length="32", long_documents="chunk", stride=30))
    with pytest.raises(ConfigError, match=r"^max_length: 2 leaves no room for text after the tokenizer's 2 special "
                                          r"tokens; expected more than 2$"):
        run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=tmp_path / "m",
                                 max_steps=1, max_length="2"))
    with pytest.raises(ConfigError, match="^stride: applies to --long-documents chunk$"):
        TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=tmp_path / "m", stride=4)


def test_data_report_shows_auto_max_length_and_what_each_choice_keeps(tmp_path):
    import csv

    from tests.helpers import long_document_rows
    from transferkit.data.prepare import DataPrepConfig, prepare_dataset

    rows = long_document_rows(120, seed=3, min_tokens=60, max_tokens=400)
    source = tmp_path / "mail.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body", "verdict"])
        writer.writerows(rows)
    result = prepare_dataset(DataPrepConfig(dataset=str(source), out=tmp_path / "out", text_column="body",
                                            label_column="verdict"))
    from transferkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    train = pq.read_table(tmp_path / "out" / "train.parquet").column("text").to_pylist()
    lengths = np.asarray([len(ids) for ids in tokenizer(train)["input_ids"]])
    expected = int(np.ceil(np.percentile(lengths, 95) / 8) * 8)
    info = result.long_documents
    assert info["max_length"] == expected and info["max_length_source"] == "auto"
    window = expected - 2
    assert info["kept_fraction"]["head_tail"] == pytest.approx(
        float(np.mean(np.minimum(lengths - 2, window) / (lengths - 2))), abs=1e-6)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Long documents" in report and "--long-documents chunk" in report and f"max_length {expected} (auto" \
        in report

