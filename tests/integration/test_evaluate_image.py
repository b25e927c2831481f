"""Evaluate step on image classifiers: real scikit-learn digits and EfficientNet-Lite0 (ImageNet weights).

The model is ``write_image_model``'s untrained-head EfficientNet-Lite0 at 32x32 pixels: its predictions are
poor but real, which gives plenty of mistakes for the contact sheet and a known accuracy for the gate.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn import metrics as skm
from typer.testing import CliRunner

from tests.helpers import prepare_image_data, write_image_model, write_movie_slice
from transferkit.cli.main import app
from transferkit.data.prepared import load_prepared
from transferkit.errors import DataError, EvaluationError, GateFailedError
from transferkit.evaluate import EvaluateConfig, evaluate_model
from transferkit.models.vision import load_image_classifier, load_image_preprocessor

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
runner = CliRunner()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-image")
    data = prepare_image_data(root / "digits")
    labels = load_prepared(data).labels
    model = write_image_model(root / "model", labels, image_size=32)
    return {"root": root, "data": data, "labels": labels, "model": model}


@pytest.fixture(scope="module")
def result(work):
    return evaluate_model(EvaluateConfig(model_dir=work["model"], data_dir=work["data"], out_dir=work["root"] / "out",
                                         baseline=str(work["model"]), top_mistakes=12, progress=False))


def test_metrics_match_an_independent_forward_pass(work, result):
    dataset = load_prepared(work["data"])
    images, y = dataset.images("test"), np.asarray(dataset.label_ids("test"))
    assert result.n_examples == len(images) > 100
    model = load_image_classifier(work["model"]).eval()
    preprocessor = load_image_preprocessor(work["model"])
    with torch.no_grad():  # unbatched, in order: must give the batched step's predictions
        logits = torch.cat([model(pixel_values=preprocessor.batch([b])).logits for b in images])
    probs = torch.softmax(logits.double(), -1).numpy()
    pred = probs.argmax(1)

    predictions = pq.read_table(result.predictions_path).to_pydict()
    assert predictions["row"] == list(range(len(images)))
    assert [work["labels"].index(v) for v in predictions["predicted"]] == pred.tolist()
    assert [work["labels"].index(v) for v in predictions["label"]] == y.tolist()
    assert result.scalars["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert result.scalars["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert result.scalars["loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(10)), rel=1e-4)
    assert 0.0 <= result.scalars["ece"] <= 1.0 and 0.0 <= result.scalars["roc_auc"] <= 1.0
    matrix = np.asarray(result.confusion_matrix)
    assert matrix.shape == (10, 10) and matrix.sum() == len(images)
    assert matrix.tolist() == skm.confusion_matrix(y, pred, labels=range(10)).tolist()
    assert result.roc is None  # ten classes: no binary curves
    assert result.extra == {"image_size": 32, "modality": "image"}


def test_report_files_and_contact_sheet(work, result):
    out = result.out_dir
    for name in ("metrics.json", "predictions.parquet", "report.html", "report.md", "confusion_matrix.png",
                 "per_class.png", "reliability.png", "mistakes.png"):
        assert (out / name).is_file(), name
    payload = json.loads(result.metrics_path.read_text())
    assert payload["modality"] == "image" and payload["image_size"] == 32 and "max_length" not in payload
    mistakes = payload["most_confident_mistakes"]
    assert len(mistakes) == 12 and all(m["true"] != m["predicted"] for m in mistakes)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    html = result.report_html.read_text()
    assert "Contact sheet of the most confident mistakes" in html
    assert html.count("data:image/png;base64,") >= 4  # confusion, per-class, reliability, mistakes
    assert "preprocessed to 32x32 pixels" in html
    assert "mistakes.png" in result.report_md.read_text()
    assert result.baseline["mode"] == "classifier" and all(v == 0 for v in result.baseline["deltas"].values())
    json.dumps(result.to_dict())


def test_gate_above_achieved_accuracy_fails(work, result):
    threshold = min(1.0, result.scalars["accuracy"] + 0.05)
    gated = evaluate_model(EvaluateConfig(model_dir=work["model"], data_dir=work["data"], out_dir=work["root"] / "g",
                                          min_primary=threshold, progress=False))
    assert gated.passed is False and gated.primary == result.primary
    with pytest.raises(GateFailedError, match="^evaluation gate failed: accuracy"):
        gated.raise_if_failed()
    cli = runner.invoke(app, ["evaluate", "--model", str(work["model"]), "--data", str(work["data"]),
                              "--out", str(work["root"] / "cli-gated"), "--min-primary", f"{threshold:.4f}"])
    assert cli.exit_code == 3, cli.output
    assert "error: evaluation gate failed: accuracy" in cli.output
    passed = runner.invoke(app, ["evaluate", "--model", str(work["model"]), "--data", str(work["data"]),
                                 "--out", str(work["root"] / "cli-ok"), "--min-primary", "0.0"])
    assert passed.exit_code == 0, passed.output


def test_binary_image_task_has_roc_and_pr(work, tmp_path):
    # Digits 0 vs 1 only: a binary prepared dataset and a two-label model.
    data = tmp_path / "binary"
    data.mkdir()
    for split in ("train", "validation", "test"):
        table = pq.read_table(work["data"] / f"{split}.parquet")
        keep = pa.compute.is_in(table.column("label_name"), pa.array(["0", "1"]))
        pq.write_table(table.filter(keep), data / f"{split}.parquet")
    (data / "labels.json").write_text(json.dumps(["0", "1"]))
    (data / "schema.json").write_text((work["data"] / "schema.json").read_text())
    model = write_image_model(tmp_path / "model", ["0", "1"], image_size=32)
    r = evaluate_model(EvaluateConfig(model_dir=model, data_dir=data, out_dir=tmp_path / "out", progress=False))
    assert len(r.confusion_matrix) == 2 and r.roc is not None and "pr_auc" in r.scalars
    assert (r.out_dir / "roc_pr.png").is_file()


def _clean_failure(result, out, message):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists()


def test_modality_mismatch_and_bad_images_fail_cleanly(work, tmp_path):
    text_data = write_movie_slice(tmp_path / "text", train=4, validation=4, test=8)
    out = tmp_path / "out"
    _clean_failure(runner.invoke(app, ["evaluate", "--model", str(work["model"]), "--data", str(text_data),
                                       "--out", str(out)]), out, "is an image classifier")
    text_model = tmp_path / "text-model"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    _clean_failure(runner.invoke(app, ["evaluate", "--model", str(text_model), "--data", str(work["data"]),
                                       "--out", str(out)]), out, "is a text model")
    with pytest.raises(EvaluationError, match="baseline efficientnet-lite0: not an image classifier with its own"):
        evaluate_model(EvaluateConfig(model_dir=work["model"], data_dir=work["data"], out_dir=out,
                                      baseline="efficientnet-lite0", progress=False))

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.parquet", "validation.parquet", "labels.json", "schema.json"):
        (broken / name).write_bytes((work["data"] / name).read_bytes())
    table = pq.read_table(work["data"] / "test.parquet")
    images = table.column("image").to_pylist()
    images[3] = b"not an image"
    pq.write_table(table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.binary())),
                   broken / "test.parquet")
    with pytest.raises(DataError, match=r"test\.parquet row 3: cannot decode image"):
        evaluate_model(EvaluateConfig(model_dir=work["model"], data_dir=broken, out_dir=out, progress=False))
    assert not out.exists()
