"""Evaluate step on the real MiniLM with a seeded classification head and a real movie-review slice."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn import metrics as skm
from typer.testing import CliRunner

from tests.helpers import MOVIE_LABELS, write_movie_slice
from transferkit.cli.main import app
from transferkit.errors import EvaluationError
from transferkit.evaluate import EvaluateConfig, evaluate_model
from transferkit.models.loading import load_encoder, load_sequence_classifier, load_tokenizer

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = write_movie_slice(root / "data", train=8, validation=8, test=48)
    # Add a group column (the slice / fairness view) to the test split.
    table = pq.read_table(data / "test.parquet")
    groups = ["short" if len(t) < 90 else "long" for t in table.column("text").to_pylist()]
    pq.write_table(table.append_column("group", pa.array(groups)), data / "test.parquet")
    schema = json.loads((data / "schema.json").read_text())
    (data / "schema.json").write_text(json.dumps({**schema, "group_column": "group"}))

    torch.manual_seed(0)
    model_dir = root / "model"
    model = load_sequence_classifier("minilm-l6", MOVIE_LABELS)
    with torch.no_grad():  # a seeded, non-trivial head so that both classes get predicted
        model.classifier.weight.normal_(0, 0.5)
    model.save_pretrained(model_dir)
    tokenizer = load_tokenizer("minilm-l6")
    tokenizer.save_pretrained(model_dir)
    (model_dir / "labels.json").write_text(json.dumps(MOVIE_LABELS))
    return {"root": root, "data": data, "model": model_dir, "groups": groups}


@pytest.fixture(scope="module")
def result(work):
    return evaluate_model(EvaluateConfig(model_dir=work["model"], data_dir=work["data"], out_dir=work["root"] / "out",
                                         baseline="minilm-l6", progress=False))


def test_metrics_match_sklearn_and_an_independent_forward_pass(work, result):
    predictions = pq.read_table(result.predictions_path).to_pydict()
    y = np.array([MOVIE_LABELS.index(v) for v in predictions["label"]])
    pred = np.array([MOVIE_LABELS.index(v) for v in predictions["predicted"]])
    assert result.scalars["accuracy"] == skm.accuracy_score(y, pred)
    assert result.scalars["macro_f1"] == skm.f1_score(y, pred, average="macro", zero_division=0)
    assert result.confusion_matrix == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert 0 < pred.sum() < len(pred)  # the seeded head predicts both classes

    # Independent check: one unbatched forward pass per text must give the same predicted labels.
    model = load_sequence_classifier(work["model"]).eval()
    tokenizer = load_tokenizer(work["model"])
    with torch.no_grad():
        logits = [model(**tokenizer(t, return_tensors="pt")).logits[0] for t in predictions["text"]]
    probs = torch.softmax(torch.stack(logits).double(), -1).numpy()
    assert (probs.argmax(1) == pred).all()
    assert result.scalars["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-9)
    assert result.scalars["loss"] == pytest.approx(skm.log_loss(y, probs), rel=1e-5)


def test_slices_baseline_and_kfp_outputs(work, result):
    assert {r["group"] for r in result.slices["slices"]} == {"short", "long"}
    values = [r["accuracy"] for r in result.slices["slices"]]
    assert result.slices["gap"] == pytest.approx(max(values) - min(values))
    predictions = pq.read_table(result.predictions_path).to_pydict()
    short = [i for i, g in enumerate(predictions["group"]) if g == "short"]
    acc_short = np.mean([predictions["label"][i] == predictions["predicted"][i] for i in short])
    assert next(r for r in result.slices["slices"] if r["group"] == "short")["accuracy"] == pytest.approx(acc_short)

    assert result.baseline["mode"] == "zero-shot"
    for key, delta in result.baseline["deltas"].items():
        assert delta == pytest.approx(result.scalars[key] - result.baseline["scalars"][key])

    # What the KFP component logs: scalars, categories + matrix, ROC points, report paths, primary value.
    assert result.labels == MOVIE_LABELS and len(result.confusion_matrix) == 2
    assert len(result.roc["fpr"]) == len(result.roc["tpr"]) == len(result.roc["thresholds"])
    assert all(np.isfinite(result.roc["thresholds"]))
    assert result.primary == result.scalars["accuracy"] and result.passed
    payload = json.loads(result.metrics_path.read_text())
    assert {"accuracy", "macro_f1", "primary", "primary_metric", "ece", "loss", "roc_auc"} <= set(payload)
    assert payload["primary"] == payload["accuracy"] and payload["primary_metric"] == "accuracy"
    html = result.report_html.read_text()
    assert html.count("data:image/png;base64,") >= 5  # confusion, per-class, ROC/PR, reliability, slices
    assert "Most confident mistakes" in html
    markdown = result.report_md.read_text()
    assert "confusion_matrix.png" in markdown and (result.out_dir / "reliability.png").is_file()
    json.dumps(result.to_dict())


def test_cli_evaluate_and_primary_gate(work):
    out = work["root"] / "cli-out"
    ok = runner.invoke(app, ["evaluate", "--model", str(work["model"]), "--data", str(work["data"]),
                             "--out", str(out), "--primary-metric", "macro_f1"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "metrics.json").read_text())["primary_metric"] == "macro_f1"
    failed = runner.invoke(app, ["evaluate", "--model", str(work["model"]), "--data", str(work["data"]),
                                 "--out", str(work["root"] / "gated"), "--min-primary", "0.999"])
    assert failed.exit_code == 3
    assert "error: evaluation gate failed: accuracy" in failed.output


def _assert_clean_failure(result, out, message):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_model_without_labels_fails_cleanly(work):
    root = work["root"]
    encoder_dir = root / "plain-encoder"
    load_encoder("minilm-l6").save_pretrained(encoder_dir)
    out = root / "no-head-out"
    result = runner.invoke(app, ["evaluate", "--model", str(encoder_dir), "--data", str(work["data"]),
                                 "--out", str(out)])
    _assert_clean_failure(result, out, "model has no classification head")

    generic = root / "generic-labels"
    load_sequence_classifier("minilm-l6", ["LABEL_0", "LABEL_1"]).save_pretrained(generic)
    load_tokenizer("minilm-l6").save_pretrained(generic)
    out = root / "generic-out"
    result = runner.invoke(app, ["evaluate", "--model", str(generic), "--data", str(work["data"]), "--out", str(out)])
    _assert_clean_failure(result, out, "model has no label names")


def test_unknown_test_labels_fail_cleanly(work, tmp_path):
    data = write_movie_slice(tmp_path / "data", train=4, validation=4, test=8)
    (data / "labels.json").write_text(json.dumps(["bad", "good"]))
    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", "--model", str(work["model"]), "--data", str(data), "--out", str(out)])
    _assert_clean_failure(result, out, "are not known to the model")
    with pytest.raises(EvaluationError, match=r"labels \['bad', 'good'\] are not known"):
        evaluate_model(EvaluateConfig(model_dir=work["model"], data_dir=data, out_dir=out, progress=False))


def test_existing_output_survives_a_failed_run(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    result = runner.invoke(app, ["evaluate", "--model", str(work["root"] / "missing"), "--data", str(work["data"]),
                                 "--out", str(out)])
    assert result.exit_code == 2
    assert (out / "metrics.json").read_text() == "{}"
