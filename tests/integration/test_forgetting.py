"""Forgetting check and the preserve-source mitigation on the real MiniLM and the real Lee corpus.

Two small models are trained here with a short plain loop on 64 real movie sentences: one deliberately
over-trained (high learning rate) in the layout `transferkit train` writes for mean-pooling models (a fixed
mean-pooling read-out layer under a BERT head), and one mildly trained plain BERT classifier (a few
low-LR steps).
"""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import write_movie_slice
from transferkit.cli.main import app
from transferkit.data.prepared import load_prepared
from transferkit.errors import ForgettingGateError
from transferkit.evaluate import EvaluateConfig, ForgettingConfig, check_forgetting, evaluate_model
from transferkit.models.loading import load_encoder, load_sequence_classifier, load_tokenizer
from transferkit.train.preserve import preserve_source

pytestmark = pytest.mark.integration
runner = CliRunner()
LEE_PEARSON_BASE = 0.656  # measured for all-MiniLM-L6-v2 (DESIGN.md section 5)


def _train(out, data, *, lr, steps, seed=0, mean_pooling=False):
    torch.manual_seed(seed)
    dataset = load_prepared(data)
    model = load_sequence_classifier("minilm-l6", dataset.labels)
    if mean_pooling:
        from transferkit.train.modeling import add_mean_pooling_layer, reinit_pooler

        index = add_mean_pooling_layer(model)
        reinit_pooler(model, seed)
        for parameter in model.bert.encoder.layer[index].parameters():
            parameter.requires_grad = False
    tokenizer = load_tokenizer("minilm-l6")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    texts, labels = dataset.texts("train"), dataset.label_ids("train")
    model.train()
    for step in range(steps):
        idx = [(step * 16 + i) % len(texts) for i in range(16)]
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=32, padding=True, return_tensors="pt")
        model(**batch, labels=torch.tensor([labels[i] for i in idx])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "labels.json").write_text(json.dumps(dataset.labels))
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgetting")
    data = write_movie_slice(root / "data", train=64, validation=32, test=32)
    return {
        "root": root,
        "data": data,
        "over": _train(root / "over", data, lr=4e-4, steps=10, mean_pooling=True),
        "mild": _train(root / "mild", data, lr=1e-5, steps=3),
    }


@pytest.fixture(scope="module")
def over_result(work):
    return check_forgetting(ForgettingConfig(base="minilm-l6", model=work["over"], out_dir=work["root"] / "over-out",
                                             min_retention=0.8, progress=False))


def test_overtrained_model_shows_a_clear_drop_and_fails_a_strict_gate(work, over_result):
    # The read-out layer of transferkit's mean-pooling classifiers is not part of the compared encoder.
    assert json.loads((work["over"] / "config.json").read_text())["transferkit_mean_pooling_layer"] == 6
    r = over_result
    assert (r.mode, r.metric) == ("similarity", "pearson")
    assert r.base_score == pytest.approx(LEE_PEARSON_BASE, abs=0.01)
    assert r.model_score < r.base_score - 0.2 and r.retention < 0.7
    assert r.passed is False and "retention" in r.reason
    assert r.retention == pytest.approx(r.model_score / r.base_score)
    payload = json.loads(r.forgetting_path.read_text())
    for key in ("mode", "metric", "base_score", "model_score", "retention", "drop", "passed"):
        assert payload[key] == getattr(r, key)
    assert payload["details"]["scores"]["spearman"]["base"] == pytest.approx(0.508, abs=0.01)
    assert payload["details"]["max_length"] == 256 and payload["details"]["n_texts"] == 50
    assert r.report_html.read_text().count("data:image/png;base64,") >= 3
    with pytest.raises(ForgettingGateError, match="^forgetting gate failed: retention"):
        r.raise_if_failed()


def test_mild_model_passes_a_loose_gate_via_cli(work):
    out = work["root"] / "mild-out"
    # Without --base, the base model comes from the training summary that `transferkit train` writes.
    (work["mild"] / "training_summary.json").write_text(json.dumps({"model": {"reference": "minilm-l6"}}))
    result = runner.invoke(app, ["forgetting", "--model", str(work["mild"]),
                                 "--out", str(out), "--min-retention", "0.5", "--max-drop", "0.2"])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "forgetting.json").read_text())
    assert payload["passed"] is True and payload["retention"] > 0.9


def test_cli_gate_failure_and_report_only(work, over_result):
    args = ["forgetting", "--base", "minilm-l6", "--model", str(work["over"]), "--max-drop", "0.05"]
    failed = runner.invoke(app, [*args, "--out", str(work["root"] / "fail-out")])
    assert failed.exit_code == 3
    errors = [line for line in failed.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "drop" in errors[0] and "max_drop 0.05" in errors[0]
    assert (work["root"] / "fail-out" / "forgetting.json").is_file()  # the report is still written
    report_only = runner.invoke(app, [*args, "--out", str(work["root"] / "ro-out"), "--report-only"])
    assert report_only.exit_code == 0, report_only.output
    assert json.loads((work["root"] / "ro-out" / "forgetting.json").read_text())["passed"] is False


def test_representation_drift_cka(work, tmp_path):
    probe = tmp_path / "probe.jsonl"  # label-free probe texts: the movie test sentences
    probe.write_text("\n".join(json.dumps({"text": t}) for t in load_prepared(work["data"]).texts("test")))
    encoder_dir = tmp_path / "encoder"  # a plain encoder (no head) is a valid --model
    load_encoder("minilm-l6").save_pretrained(encoder_dir)
    same = check_forgetting(ForgettingConfig(base="minilm-l6", model=encoder_dir, source=str(probe),
                                             out_dir=tmp_path / "same", progress=False))
    assert same.mode == "representation-drift" and same.metric == "cka"
    assert same.model_score == pytest.approx(1.0, abs=1e-6) and same.retention == pytest.approx(1.0, abs=1e-6)
    drift = check_forgetting(ForgettingConfig(base="minilm-l6", model=work["over"], source=str(probe),
                                              out_dir=tmp_path / "drift", progress=False))
    assert drift.model_score < 0.95
    layers = drift.details["cka_per_layer"]
    assert len(layers) == 7 and layers[0] > layers[-1]  # drift grows toward the top of the network


def test_source_task_mode_uses_the_base_head(work, tmp_path):
    # The over-trained classifier plays the "base model with its own head"; the plain MiniLM encoder plays
    # the fine-tuned encoder. The base score must equal the classifier's own accuracy from evaluate.
    encoder_dir = tmp_path / "encoder"
    load_encoder("minilm-l6").save_pretrained(encoder_dir)
    evaluated = evaluate_model(EvaluateConfig(model_dir=work["over"], data_dir=work["data"],
                                              out_dir=tmp_path / "eval", progress=False))
    same = check_forgetting(ForgettingConfig(base=str(work["over"]), model=work["over"], source=str(work["data"]),
                                             out_dir=tmp_path / "same", progress=False))
    assert same.mode == "source-task" and same.metric == "accuracy"
    assert same.base_score == pytest.approx(evaluated.scalars["accuracy"]) and same.retention == 1.0
    swapped = check_forgetting(ForgettingConfig(base=str(work["over"]), model=encoder_dir,
                                                source=str(work["data"]), out_dir=tmp_path / "swap", progress=False))
    assert swapped.base_score == same.base_score and swapped.model_score != swapped.base_score


def test_source_task_needs_a_base_head(work, tmp_path):
    result = runner.invoke(app, ["forgetting", "--base", "minilm-l6", "--model", str(work["mild"]),
                                 "--source", str(work["data"]), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "base model has no classification head" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text_a,text_b\nx,y\nx,z\ny,z\n", "missing column(s) score"),
        ("text_a,text_b,score\nx,y,0.1\nx,z,lots\ny,z,0.3\n", "row 2: score 'lots' is not a number"),
        ("text_a,text_b,score\nx,y,0.1\nx,z,0.2\n", "at least 3 are needed"),
    ],
)
def test_bad_pairs_file_fails_cleanly(work, tmp_path, content, message):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(content)
    out = tmp_path / "out"
    result = runner.invoke(app, ["forgetting", "--base", "minilm-l6", "--model", str(work["mild"]),
                                 "--source", str(pairs), "--out", str(out)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and str(pairs) in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_custom_pairs_csv(work, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "text_a,text_b,score\n"
        "the film was wonderful,a truly great movie,0.9\n"
        "the film was wonderful,stock prices fell sharply,0.05\n"
        "a truly great movie,stock prices fell sharply,0.1\n"
        "the weather is cold today,it is freezing outside,0.85\n"
    )
    r = check_forgetting(ForgettingConfig(base="minilm-l6", model=work["mild"], source=str(pairs),
                                          out_dir=tmp_path / "out", progress=False))
    assert r.mode == "similarity" and r.base_score > 0.8 and r.details["n_texts"] == 5


def test_preserve_source_raises_retention(work, over_result):
    model_dir = work["root"] / "preserved"
    shutil.copytree(work["over"], model_dir)
    summary = preserve_source(model_dir, base="minilm-l6", data_dir=work["data"], source=None, min_retention=0.8,
                              splits=[0, 3], bisection_steps=2, top_k=1, progress=False)
    assert summary["changed"] is True and summary["original"]["retention"] == pytest.approx(over_result.retention)
    assert summary["retention"] >= 0.8 and 0 <= summary["alpha"] < 1 and summary["split_layer"] in (0, 3)
    assert {"alpha", "validation_accuracy", "retention", "candidates", "profile"} <= set(summary)
    assert len(summary["profile"]) == 7  # embeddings + 6 pre-trained layers (the read-out layer is not touched)
    assert (model_dir / "preserve_source.json").is_file()
    # The rewritten model measures the same retention in an independent forgetting check.
    after = check_forgetting(ForgettingConfig(base="minilm-l6", model=model_dir, out_dir=work["root"] / "pres-out",
                                              min_retention=0.8, progress=False))
    assert after.passed and after.retention == pytest.approx(summary["retention"], abs=1e-4)
    assert after.retention > over_result.retention + 0.1
