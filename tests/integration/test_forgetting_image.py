"""Forgetting check for image classifiers on real MNIST / Fashion-MNIST digits and EfficientNet-Lite0.

The fixture trains a small transformers ResNet on the real MNIST digits of ``builtin:mnist-5k`` (a short
plain loop) and saves it as the "pre-trained" model with its own digit head; it then fine-tunes a copy fully
on a Fashion-MNIST subset with a new head, long enough to forget the digits. The source-task mode measures
MNIST accuracy of the base head on the base backbone vs on the fine-tuned backbone (head transplant).
"""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import prepare_image_data, write_image_model
from transferkit.cli.main import app
from transferkit.data.prepared import load_prepared
from transferkit.data.transforms import ImagePreprocessConfig, ImagePreprocessor
from transferkit.errors import ForgettingGateError
from transferkit.evaluate import EvaluateConfig, ForgettingConfig, check_forgetting, evaluate_model
from transferkit.models.vision import load_image_classifier, save_image_classifier

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
runner = CliRunner()
PREPROCESSING = ImagePreprocessConfig(image_size=28)


def _tensors(data, split, preprocessor):
    dataset = load_prepared(data)
    return preprocessor.batch(dataset.images(split)), torch.tensor(dataset.label_ids(split)), dataset.labels


def _fit(model, x, y, *, steps, lr, seed, batch=64):
    """Plain Adam loop with cosine decay on in-memory tensors; BatchNorm statistics adapt too (train mode)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(x), (batch,), generator=generator)
        model(pixel_values=x[idx], labels=y[idx]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from transformers import ResNetConfig, ResNetForImageClassification

    root = tmp_path_factory.mktemp("forgetting-image")
    mnist = prepare_image_data(root / "mnist", "builtin:mnist-5k")
    fashion = prepare_image_data(root / "fashion", "builtin:fashion-mnist", max_rows=3000)
    preprocessor = ImagePreprocessor(PREPROCESSING)

    torch.manual_seed(0)
    x, y, digit_labels = _tensors(mnist, "train", preprocessor)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_channels=3,
                          layer_type="basic", id2label=dict(enumerate(digit_labels)),
                          label2id={name: i for i, name in enumerate(digit_labels)})
    base = _fit(ResNetForImageClassification(config), x, y, steps=400, lr=3e-3, seed=0)
    base_dir = save_image_classifier(base, root / "mnist-resnet", digit_labels, PREPROCESSING)

    fx, fy, fashion_labels = _tensors(fashion, "train", preprocessor)
    tuned = load_image_classifier(base_dir, fashion_labels)  # same backbone, fresh 10-way head
    tuned = _fit(tuned, fx, fy, steps=300, lr=3e-3, seed=1)
    tuned_dir = save_image_classifier(tuned, root / "fashion-resnet", fashion_labels, PREPROCESSING)
    return {"root": root, "mnist": mnist, "fashion": fashion, "base": base_dir, "tuned": tuned_dir}


@pytest.fixture(scope="module")
def forgotten(work):
    return check_forgetting(ForgettingConfig(base=str(work["base"]), model=work["tuned"], source=str(work["mnist"]),
                                             out_dir=work["root"] / "forgotten", min_retention=0.8, progress=False))


def test_source_task_head_transplant_shows_forgetting(work, forgotten):
    r = forgotten
    # The base head knows every source label, so the mode follows without --mode.
    assert (r.mode, r.metric) == ("source-task", "accuracy")
    # The base score is the base model's own accuracy, as the evaluate step measures it.
    evaluated = evaluate_model(EvaluateConfig(model_dir=work["base"], data_dir=work["mnist"],
                                              out_dir=work["root"] / "eval-base", progress=False))
    assert r.base_score == pytest.approx(evaluated.scalars["accuracy"])
    assert r.base_score > 0.9
    assert r.model_score < r.base_score - 0.3
    assert r.passed is False and "retention" in r.reason
    assert r.retention == pytest.approx(r.model_score / r.base_score)
    with pytest.raises(ForgettingGateError, match="^forgetting gate failed: retention"):
        r.raise_if_failed()
    payload = json.loads(r.forgetting_path.read_text())
    assert payload["details"]["modality"] == "image" and payload["details"]["image_size"] == 28
    assert payload["details"]["n_images"] == evaluated.n_examples
    assert set(payload["details"]["scores"]) == {"accuracy", "macro_f1"}
    html = r.report_html.read_text()
    assert "Head transplant" in html and html.count("data:image/png;base64,") >= 1
    assert (r.out_dir / "before_after.png").is_file()


def test_identical_model_keeps_everything_and_passes(work):
    same = check_forgetting(ForgettingConfig(base=str(work["base"]), model=work["base"], source=str(work["mnist"]),
                                             out_dir=work["root"] / "same", min_retention=0.99, progress=False))
    assert same.retention == 1.0 and same.drop == 0.0 and same.passed


def test_cli_gate_and_clean_errors(work, forgotten):
    args = ["forgetting", "--base", str(work["base"]), "--model", str(work["tuned"])]
    failed = runner.invoke(app, [*args, "--source", str(work["mnist"]), "--max-drop", "0.1",
                                 "--out", str(work["root"] / "cli-fail")])
    assert failed.exit_code == 3, failed.output
    errors = [line for line in failed.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "forgetting gate failed: drop" in errors[0]
    assert json.loads((work["root"] / "cli-fail" / "forgetting.json").read_text())["model_score"] == pytest.approx(
        forgotten.model_score)

    for extra, message in [
        (["--source", "builtin:lee-similarity"], "a text source set"),
        ([], "has no default source set"),
        (["--source", str(work["mnist"]), "--mode", "similarity"], "similarity mode needs text pairs"),
    ]:
        out = work["root"] / "cli-bad"
        result = runner.invoke(app, [*args, *extra, "--out", str(out)])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.output
        assert not out.exists()

    mixed = runner.invoke(app, ["forgetting", "--base", "minilm-l6", "--model", str(work["tuned"]),
                                "--out", str(work["root"] / "cli-mixed")])
    assert mixed.exit_code == 2
    assert "an image model, but the base minilm-l6 is a text model" in mixed.output


def test_representation_drift_per_stage_on_efficientnet_lite0(work, tmp_path):
    digits = prepare_image_data(tmp_path / "digits")
    labels = load_prepared(digits).labels
    same_dir = write_image_model(tmp_path / "lite-same", labels, image_size=32)  # ImageNet backbone, new head

    torch.manual_seed(0)
    x, y, _ = _tensors(digits, "train", ImagePreprocessor(ImagePreprocessConfig(image_size=32)))
    tuned = _fit(load_image_classifier("efficientnet-lite0", labels), x, y, steps=6, lr=1e-3, seed=2, batch=32)
    tuned_dir = save_image_classifier(tuned, tmp_path / "lite-tuned", labels, ImagePreprocessConfig(image_size=32))

    common = {"base": "efficientnet-lite0", "source": str(digits), "mode": "representation-drift",
              "image_size": 32, "probe_size": 64, "progress": False}
    same = check_forgetting(ForgettingConfig(model=same_dir, out_dir=tmp_path / "same", **common))
    assert (same.mode, same.metric) == ("representation-drift", "cka")
    names = same.details["cka_layer_names"]
    assert names[0] == "stem" and names[-1] == "top" and "head" not in names
    assert len(same.details["cka_per_layer"]) == len(names) == 9
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in same.details["cka_per_layer"])
    assert same.retention == pytest.approx(1.0, abs=1e-6)

    drift = check_forgetting(ForgettingConfig(model=tuned_dir, out_dir=tmp_path / "drift", **common))
    values = drift.details["cka_per_layer"]
    assert all(0.0 <= v <= 1.0 for v in values) and min(values) < 0.999
    assert drift.model_score == pytest.approx(values[-1]) and drift.base_score == pytest.approx(1.0)
    assert (drift.out_dir / "layer_cka.png").is_file()
    assert "Representation drift per stage" in drift.report_html.read_text()

    # Without --source/--mode, efficientnet-lite0 uses its catalog default: Fashion-MNIST, representation drift.
    default = check_forgetting(ForgettingConfig(base="efficientnet-lite0", model=same_dir, out_dir=tmp_path / "dflt",
                                                image_size=32, probe_size=32, progress=False))
    assert default.source == "builtin:fashion-mnist" and default.mode == "representation-drift"
    assert default.details["n_images"] == 32 and default.details["source_size"] == 70000
