"""Image-model helpers of the serving step that need no server: smoke inputs, deploy and load-generator configs."""

import io
import json

import pytest
from PIL import Image

from tests.unit.serve.image_export import shared_digits_data
from transferkit.errors import ConfigError
from transferkit.serve.deploy import DeployConfig
from transferkit.serve.loadgen import LoadConfig
from transferkit.serve.smoke import smoke_images_from_data, synthetic_smoke_images


def test_synthetic_smoke_images_cover_the_decoder_paths():
    images = synthetic_smoke_images()
    opened = [Image.open(io.BytesIO(data)) for data in images]
    assert [(i.format, i.mode) for i in opened] == [("PNG", "L"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16")]
    assert synthetic_smoke_images() == images  # deterministic


def test_smoke_images_from_data_take_one_per_label_first():
    data = shared_digits_data()
    images, labels = smoke_images_from_data(data, count=10)
    assert sorted(labels) == json.loads((data / "labels.json").read_text())
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in images)
    few, few_labels = smoke_images_from_data(data, count=3)
    assert len(few) == 3 and len(set(few_labels)) == 3


def test_smoke_data_must_be_a_prepared_image_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"^smoke_data: .*prepared dataset directory not found"):
        smoke_images_from_data(tmp_path / "missing")


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"smoke_count": 0}, r"smoke_count: must be >= 1"),
    ({"smoke_expected_labels": ["1"]}, r"smoke_expected_labels: 1 labels for 4 smoke_texts"),
])
def test_deploy_config_validates_smoke_settings(tmp_path, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        DeployConfig(onnx_dir=tmp_path, name="m", repository=str(tmp_path / "repo"), triton_url="http://127.0.0.1:1",
                     **kwargs)


def test_deploy_config_with_smoke_data_defers_the_label_count(tmp_path):
    config = DeployConfig(onnx_dir=tmp_path, name="m", repository=str(tmp_path / "repo"),
                          triton_url="http://127.0.0.1:1", smoke_data=str(tmp_path), smoke_expected_labels=["1"])
    assert config.smoke_data == tmp_path


def test_load_config_accepts_images_and_rejects_empty_ones():
    config = LoadConfig(http_url="http://127.0.0.1:8000", model="digits", images=[b"\x89PNG..."])
    assert config.images == (b"\x89PNG...",)
    with pytest.raises(ConfigError, match="images: expected at least one non-empty encoded image"):
        LoadConfig(http_url="http://127.0.0.1:8000", model="digits", images=[b""])
