"""Image classifiers: EfficientNet-Lite0 offline, tiny transformers models, save/load, stage groups."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_transformers_image_model, write_tiny_transformers_image_model
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.data.prepared import PreparedDataset, load_prepared
from transferkit.errors import DataError, ModelError, UnsafeModelError
from transferkit.models.catalog import CATALOG, resolve_model
from transferkit.models.vision import (
    EfficientNetLiteForImageClassification,
    load_image_classifier,
    load_image_preprocessor,
    named_stage_groups,
    save_image_classifier,
    stage_groups,
)

LITE = "efficientnet-lite0"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """A real prepared image dataset: 300 of scikit-learn's digits through the data-prep step."""
    out = tmp_path_factory.mktemp("digits") / "prepared"
    prepare_dataset(DataPrepConfig(dataset="builtin:digits", out=out, task="image-classification", max_rows=300))
    return load_prepared(out)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _batch(dataset: PreparedDataset, preprocessor, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    images = dataset.images("train")[:n]
    return preprocessor.batch(images), torch.tensor(dataset.label_ids("train")[:n])


def test_efficientnet_lite0_loads_offline_with_catalog_parameter_count():
    model = load_image_classifier(LITE)
    assert isinstance(model, EfficientNetLiteForImageClassification)
    assert sum(p.numel() for p in model.parameters()) == CATALOG[LITE].parameters == 4_652_008
    assert model.num_labels == 1000 and not model.training


def test_imagenet_weights_recognise_real_photos():
    from sklearn.datasets import load_sample_images

    model = load_image_classifier(LITE)
    preprocessor = load_image_preprocessor(LITE)
    pixels = preprocessor.batch([_png(image) for image in load_sample_images().images])
    with torch.no_grad():
        logits = model(pixels).logits
    assert logits.shape == (2, 1000)
    # ImageNet-1k class 698 is "palace" (the temple photo), 985 is "daisy" (the flower photo).
    assert logits.argmax(-1).tolist() == [698, 985]


def test_new_head_for_prepared_digits(digits):
    base = load_image_classifier(LITE)
    model = load_image_classifier(LITE, labels=digits.labels)
    assert model.num_labels == 10 and model.config.labels == digits.labels
    assert torch.equal(model.encoder._conv_stem.weight, base.encoder._conv_stem.weight)  # backbone kept
    pixels, labels = _batch(digits, load_image_preprocessor(LITE))
    assert pixels.shape == (8, 3, 224, 224)
    with torch.no_grad():
        out = model(pixels, labels=labels)
    assert out.logits.shape == (8, 10)
    expected = torch.nn.functional.cross_entropy(out.logits, labels)
    assert out.loss is not None and torch.allclose(out.loss, expected)


def test_lite_save_load_round_trip_gives_identical_logits(digits, tmp_path):
    torch.manual_seed(0)
    model = load_image_classifier(LITE, labels=digits.labels)
    preprocessor = load_image_preprocessor(LITE)
    out = save_image_classifier(model, tmp_path / "model", digits.labels, preprocessor)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "labels.json", "model.safetensors",
                                                     "preprocessor.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["transferkit_architecture"] == LITE and config["num_labels"] == 10
    assert config["id2label"]["3"] == digits.labels[3] and config["label2id"][digits.labels[3]] == 3
    assert json.loads((out / "labels.json").read_text()) == digits.labels
    assert resolve_model(out).head_labels == digits.labels

    again = load_image_classifier(out)
    assert load_image_preprocessor(out).config == preprocessor.config
    pixels, _ = _batch(digits, preprocessor, 4)
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, again(pixels).logits)
    same_labels = load_image_classifier(out, labels=digits.labels)
    assert torch.equal(same_labels.classifier.weight, model.classifier.weight)
    fewer = load_image_classifier(out, labels=["zero", "one", "two"])
    assert fewer.classifier.out_features == 3
    assert torch.equal(fewer.encoder._conv_head.weight, model.encoder._conv_head.weight)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_tiny_transformers_model_loads_trains_and_round_trips(kind, digits, tmp_path):
    model_dir = write_tiny_transformers_image_model(kind, tmp_path)
    model = load_image_classifier(model_dir, labels=digits.labels)
    assert model.config.num_labels == 10 and model.config.id2label[3] == digits.labels[3]
    preprocessor = load_image_preprocessor(model_dir)
    assert preprocessor.config.image_size == 32
    pixels, labels = _batch(digits, preprocessor, 16)

    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(pixels, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    before = loss.item()
    with torch.no_grad():
        after = model(pixels, labels=labels).loss.item()
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before  # one AdamW step on the same batch (seeded: deterministic)

    model.eval()
    out = save_image_classifier(model, tmp_path / "saved", digits.labels, preprocessor)
    assert json.loads((out / "config.json").read_text())["transferkit_architecture"] == "transformers"
    again = load_image_classifier(out)
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, again(pixels).logits)
    assert load_image_preprocessor(out).config == preprocessor.config


def test_same_size_head_with_other_labels_is_reinitialised(tmp_path):
    model_dir = write_tiny_transformers_image_model("resnet", tmp_path)
    first = load_image_classifier(model_dir)
    relabelled = load_image_classifier(model_dir, labels=["cat", "dog", "owl"])
    assert relabelled.config.id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert not torch.equal(first.classifier[1].weight, relabelled.classifier[1].weight)
    assert torch.equal(first.resnet.embedder.embedder.convolution.weight,
                       relabelled.resnet.embedder.embedder.convolution.weight)


def _check_groups(model, stem_marker: str) -> list[tuple[str, list[str]]]:
    groups = named_stage_groups(model)
    flat = [name for _, names in groups for name in names]
    # Every parameter exactly once, in registration order (input stem first, head last).
    assert flat == [name for name, _ in model.named_parameters()]
    assert stage_groups(model) == [names for _, names in groups]
    assert groups[0][0] == "stem" and all(stem_marker in name for name in groups[0][1])
    assert groups[-1][0] == "head" and all(name.startswith("classifier") for name in groups[-1][1])
    return groups


def test_stage_groups_efficientnet_lite0():
    groups = _check_groups(load_image_classifier(LITE, labels=["a", "b"]), "_")
    assert [name for name, _ in groups] == ["stem", *(f"stage.{i}" for i in range(1, 8)), "top", "head"]
    assert groups[1][1][0].startswith("encoder._blocks.0.") and groups[-2][1][0] == "encoder._conv_head.weight"


@pytest.mark.parametrize(
    ("kind", "stem", "blocks"),
    [("resnet", "embedder", 2), ("vit", "embeddings", 2), ("convnext", "embeddings", 2),
     ("efficientnet", "embeddings", None)],
)
def test_stage_groups_transformers(kind, stem, blocks):
    groups = _check_groups(tiny_transformers_image_model(kind), stem)
    middle = [name for name, _ in groups[1:-1] if name != "top"]
    assert middle == [f"{middle[0].split('.')[0]}.{i}" for i in range(len(middle))]
    if blocks is not None:
        assert len(middle) == blocks
    if kind in ("vit", "convnext", "efficientnet"):
        assert groups[-2][0] == "top"  # final norm / top convolution between the blocks and the head


def test_unknown_model_name():
    with pytest.raises(ModelError, match="not a catalog name") as caught:
        load_image_classifier("no-such-model")
    assert "\n" not in str(caught.value)


def test_text_model_is_not_an_image_model():
    with pytest.raises(ModelError, match="text-classification"):
        load_image_classifier("minilm-l6")


def test_directory_without_weights(tmp_path):
    model_dir = write_tiny_transformers_image_model("resnet", tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights found") as caught:
        load_image_classifier(model_dir)
    assert "\n" not in str(caught.value)


def test_pickle_only_weights_refused(tmp_path):
    model_dir = write_tiny_transformers_image_model("resnet", tmp_path)
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="pytorch_model.bin"):
        load_image_classifier(model_dir)


def test_corrupt_saved_weights(tmp_path):
    out = save_image_classifier(load_image_classifier(LITE, labels=["a", "b"]), tmp_path / "m", ["a", "b"],
                                CATALOG[LITE].preprocessing)
    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="model.safetensors") as caught:
        load_image_classifier(out)
    assert "\n" not in str(caught.value)


def test_bad_labels_and_mismatched_save(tmp_path):
    with pytest.raises(ModelError, match="at least 2 distinct"):
        load_image_classifier(LITE, labels=["only"])
    model = load_image_classifier(LITE, labels=["a", "b"])
    with pytest.raises(ModelError, match="3 labels for a head with 2 outputs"):
        save_image_classifier(model, tmp_path / "m", ["a", "b", "c"], CATALOG[LITE].preprocessing)
    assert not (tmp_path / "m").exists()


def test_corrupt_image_bytes_raise_data_error():
    preprocessor = load_image_preprocessor(LITE)
    with pytest.raises(DataError, match="test.parquet row 7") as caught:
        preprocessor(b"\x89PNG\r\n\x1a\n broken", "test.parquet row 7")
    assert "\n" not in str(caught.value)
