"""Image pieces of evaluate/forgetting: image source sets, mode choice, stage hooks, head transplant, thumbnails."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from transferkit.data.transforms import ImagePreprocessConfig, ImagePreprocessor
from transferkit.errors import ConfigError, EvaluationError, SchemaError
from transferkit.evaluate import ForgettingConfig
from transferkit.evaluate.forgetting_image import backbone_state, choose_image_mode
from transferkit.evaluate.image_inference import predict_image_proba, stage_features, stage_modules, thumbnail
from transferkit.evaluate.sources import SourceSet, load_source


def _png(value: int, size: int = 12, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 255 - value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _resnet(labels=10):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3, layer_type="basic",
                          num_labels=labels)
    return ResNetForImageClassification(config).eval()


def test_image_parquet_and_builtin_sources(tmp_path):
    pd.DataFrame({"image": [_png(0), _png(200)], "label": ["dark", "light"]}).to_parquet(tmp_path / "l.parquet")
    labelled = load_source(tmp_path / "l.parquet")
    assert labelled.kind == "labelled" and labelled.modality == "image" and labelled.size == 2
    assert labelled.labels == ["dark", "light"] and "2 labelled images" in labelled.describe()
    pd.DataFrame({"image": [_png(0), _png(9), _png(90)]}).to_parquet(tmp_path / "u.parquet")
    probe = load_source(tmp_path / "u.parquet")
    assert probe.kind == "images" and probe.size == 3 and probe.texts == []
    digits = load_source("builtin:digits")
    assert digits.modality == "image" and digits.size == 1797 and sorted(set(digits.labels))[0] == "0"
    assert load_source("builtin:lee-similarity").modality == "text"


def test_bad_image_rows_are_named(tmp_path):
    pd.DataFrame({"image": [_png(0), b""], "label": ["a", "b"]}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(SchemaError, match=r"e\.parquet: row 2: column 'image' must hold non-empty"):
        load_source(tmp_path / "e.parquet")
    pd.DataFrame({"image": [_png(0), _png(1)], "label": ["a", " "]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match="row 2: empty label"):
        load_source(tmp_path / "b.parquet")


def test_mode_choice_for_images():
    labelled = SourceSet("s", "labelled", [], labels=["0", "1"], images=[b"x", b"y"])
    probe = SourceSet("p", "images", [], images=[b"x"])
    assert choose_image_mode(labelled, None, ["0", "1", "2"], catalog_mode=None, where="s") == "source-task"
    assert choose_image_mode(labelled, None, ["7", "8"], catalog_mode=None, where="s") == "representation-drift"
    assert choose_image_mode(labelled, None, None, catalog_mode=None, where="s") == "representation-drift"
    assert choose_image_mode(labelled, None, ["0", "1"], catalog_mode="representation-drift",
                             where="s") == "representation-drift"
    with pytest.raises(EvaluationError, match="similarity mode needs text pairs"):
        choose_image_mode(labelled, "similarity", None, catalog_mode=None, where="s")
    with pytest.raises(EvaluationError, match="source-task mode needs labelled images"):
        choose_image_mode(probe, "source-task", None, catalog_mode=None, where="p")
    with pytest.raises(ConfigError, match="^image_size:"):
        ForgettingConfig(base="efficientnet-lite0", model="m", out_dir="o", image_size=4)


def test_stage_modules_and_pooled_features():
    model = _resnet()
    assert stage_modules(model) == [("stem", ["resnet.embedder"]), ("stage.0", ["resnet.encoder.stages.0"]),
                                    ("stage.1", ["resnet.encoder.stages.1"])]
    images = [_png(v, mode="RGB") for v in (0, 60, 120, 250, 30)]
    preprocessor = ImagePreprocessor(ImagePreprocessConfig(image_size=16))
    names, feats = stage_features(model, preprocessor, images, batch_size=2, progress=False, device="cpu")
    assert names == ["stem", "stage.0", "stage.1"]
    assert [f.shape for f in feats] == [(5, 8), (5, 8), (5, 16)]
    # The last stage pooled equals the model's own pooled output (what the head reads).
    with torch.no_grad():
        pooled = model.resnet(preprocessor.batch(images)).pooler_output.flatten(1).numpy()
    np.testing.assert_allclose(feats[-1], pooled, rtol=1e-5, atol=1e-6)
    probs = predict_image_proba(model, preprocessor, images, batch_size=3, progress=False, device="cpu")
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1.0)


def test_efficientnet_lite_stage_modules():
    from transferkit.models.vision import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=3))
    stages = dict(stage_modules(model))
    assert stages["stem"] == ["encoder._conv_stem", "encoder._bn0"]
    assert stages["top"] == ["encoder._conv_head", "encoder._bn1"]
    assert stages["stage.1"] == ["encoder._blocks.0"] and len(stages) == 9 and "head" not in stages


def test_backbone_state_leaves_out_the_head():
    model = _resnet(labels=4)
    keys = set(backbone_state(model))
    assert not any(k.startswith("classifier.") for k in keys)
    assert "resnet.embedder.embedder.normalization.running_mean" in keys  # buffers travel with the backbone


def test_thumbnail_shapes():
    assert thumbnail(_png(10, size=8)).shape == (8, 8)
    assert thumbnail(_png(10, size=300, mode="RGB")).shape == (96, 96, 3)
    assert thumbnail(b"garbage").dtype == np.uint8
