"""Image preprocessing and augmentation on known and real images."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data.transforms import (
    AugmentConfig,
    ImageAugmenter,
    ImagePreprocessConfig,
    ImagePreprocessor,
)
from transferkit.errors import ConfigError, DataError
from transferkit.models.catalog import CATALOG


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real 427x640 photograph (scikit-learn's sample image of a Chinese temple) as PNG bytes."""
    from sklearn.datasets import load_sample_image

    return _png(load_sample_image("china.jpg"))


@pytest.fixture(scope="module")
def digit() -> bytes:
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[0] * (255.0 / 16.0)).astype(np.uint8)
    return _png(pixels)


def test_solid_colour_is_scaled_and_normalised_exactly():
    config = ImagePreprocessConfig(image_size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    out = ImagePreprocessor(config)(_png(np.full((10, 20, 3), (255, 0, 128), np.uint8)))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    expected = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (128 / 255 - 0.0) / 2.0]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[channel], torch.full((8, 8), value), atol=1e-6)


def test_shorter_side_resize_then_centre_crop():
    # 4 rows x 8 columns: columns 0-3 black, 4-7 white. Shorter side is already 4, so only the crop acts:
    # the centre 4 columns (2..5) are kept: two black then two white.
    pixels = np.zeros((4, 8), np.uint8)
    pixels[:, 4:] = 255
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=4, mean=0.0, std=1.0, resample="nearest"))
    out = pre(_png(pixels))
    assert out.shape == (3, 4, 4)
    assert torch.equal(out[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # grey becomes three equal channels


def test_squash_keeps_the_whole_image():
    pixels = np.zeros((4, 8), np.uint8)
    pixels[:, 4:] = 255
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=4, mean=0.0, std=1.0, resample="nearest",
                                                  resize_mode="squash"))
    assert torch.equal(pre(_png(pixels))[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4))
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=2, resize_size=4, mean=0.0, std=1.0,
                                                  resample="nearest"))
    assert torch.equal(pre(_png(pixels))[0], torch.tensor([[0.0, 1.0]] * 2))


def test_modes_become_rgb():
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=2, mean=0.0, std=1.0))
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black -> white background
    assert torch.allclose(pre(_png(rgba, "RGBA")), torch.ones(3, 2, 2))
    grey16 = np.full((2, 2), 65535, np.uint16)
    assert Image.fromarray(grey16).mode == "I;16"
    assert torch.allclose(pre(_png(grey16)), torch.ones(3, 2, 2))
    palette = Image.new("P", (2, 2))
    palette.putpalette([10, 20, 30] * 256)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    out = pre(buffer.getvalue())
    assert torch.allclose(out[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_real_photo_through_catalog_preprocessing(photo):
    pre = ImagePreprocessor.from_catalog(CATALOG["efficientnet-lite0"].preprocessing)
    out = pre(photo)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert -1.0 <= float(out.min()) < -0.5 and 0.5 < float(out.max()) <= 1.0  # (x - 0.498) / 0.502
    batch = pre.batch([photo, photo])
    assert batch.shape == (2, 3, 224, 224) and torch.equal(batch[0], out)


def test_hf_preprocessor_configs(tmp_path):
    resnet = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "resample": 3,
              "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
              "size": {"shortest_edge": 224}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(resnet))
    config = ImagePreprocessor.from_dir(tmp_path).config
    assert (config.image_size, config.resize_size, config.resample) == (224, 256, "bicubic")
    vit = {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    config = ImagePreprocessConfig.from_hf_dict(vit)
    assert (config.image_size, config.resize_mode) == (32, "squash")
    clip = {"size": {"shortest_edge": 64}, "crop_size": {"height": 56, "width": 56}, "do_center_crop": True}
    config = ImagePreprocessConfig.from_hf_dict(clip)
    assert (config.image_size, config.resize_size) == (56, 64)
    with pytest.raises(ConfigError, match="square"):
        ImagePreprocessConfig.from_hf_dict({"size": {"height": 32, "width": 48}})


def test_preprocessor_json_round_trip(tmp_path, photo):
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=48, resize_size=56, mean=0.4, std=0.3))
    (tmp_path / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
    again = ImagePreprocessor.from_dir(tmp_path)
    assert again.config == pre.config
    assert torch.equal(again(photo), pre(photo))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 224, "resize_size": 200}, "resize_size"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"resample": "cubic"}, "resample"),
        ({"resize_mode": "stretch"}, "resize_mode"),
    ],
)
def test_bad_preprocess_config(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        ImagePreprocessConfig(**kwargs)
    assert "\n" not in str(caught.value)


def test_missing_preprocessor_config(tmp_path):
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        ImagePreprocessor.from_dir(tmp_path)


@pytest.mark.parametrize("data", [b"", b"not an image at all", _png(np.zeros((8, 8), np.uint8))[:40]])
def test_corrupt_image_bytes_raise_data_error(data):
    with pytest.raises(DataError, match="train.parquet row 3") as caught:
        ImagePreprocessor()(data, "train.parquet row 3")
    assert "\n" not in str(caught.value)


def test_augmentation_off_by_default_equals_eval_transform(photo):
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=64))
    augmenter = ImageAugmenter()
    assert not augmenter.enabled
    assert torch.equal(pre(photo, augmenter=augmenter, rng=augmenter.rng_for(0, 0)), pre(photo))


def test_augmentation_reproducible_per_seed_and_different_across_seeds(photo):
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=64))
    augmenter = ImageAugmenter(AugmentConfig(enabled=True, seed=7))
    first = pre(photo, augmenter=augmenter, rng=augmenter.rng_for(epoch=1, index=5))
    again = pre(photo, augmenter=augmenter, rng=augmenter.rng_for(epoch=1, index=5))
    assert first.shape == (3, 64, 64) and torch.equal(first, again)
    other_seed = ImageAugmenter(AugmentConfig(enabled=True, seed=8))
    assert not torch.equal(first, pre(photo, augmenter=other_seed, rng=other_seed.rng_for(epoch=1, index=5)))
    assert not torch.equal(first, pre(photo, augmenter=augmenter, rng=augmenter.rng_for(epoch=2, index=5)))
    assert not torch.equal(first, pre(photo))


def test_augmentation_crop_box_within_configured_ranges():
    augmenter = ImageAugmenter(AugmentConfig(enabled=True, crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0)))
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = augmenter.crop_box(640, 427, rng)
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 427
        area = (right - left) * (bottom - top) / (640 * 427)
        assert 0.28 <= area <= 0.62
        assert 0.45 <= (right - left) / (bottom - top) <= 2.1


def test_digits_never_flipped(digit):
    # With no crop, no jitter and flip off, every draw reproduces the eval transform; with flip on,
    # some draws mirror the digit.
    pre = ImagePreprocessor(ImagePreprocessConfig(image_size=16, mean=0.0, std=1.0))
    still = ImageAugmenter(AugmentConfig(enabled=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                                         brightness=0.0, contrast=0.0, saturation=0.0))
    outs = [pre(digit, augmenter=still, rng=still.rng_for(0, i)) for i in range(8)]
    assert all(torch.equal(o, pre(digit)) for o in outs)
    flipping = ImageAugmenter(AugmentConfig(enabled=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                            flip=True, brightness=0.0, contrast=0.0, saturation=0.0))
    outs = [pre(digit, augmenter=flipping, rng=flipping.rng_for(0, i)) for i in range(8)]
    assert any(torch.equal(o, pre(digit).flip(-1)) for o in outs)
    assert not AugmentConfig.for_digits().flip


def test_augmentation_needs_a_generator(photo):
    augmenter = ImageAugmenter(AugmentConfig(enabled=True))
    with pytest.raises(ConfigError, match="rng"):
        ImagePreprocessor()(photo, augmenter=augmenter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
        ({"brightness": 1.5}, "brightness"),
        ({"saturation": -0.1}, "saturation"),
        ({"seed": -1}, "seed"),
        ({"crop_scale": "big"}, "crop_scale"),
    ],
)
def test_bad_augment_config(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        AugmentConfig(**kwargs)
    assert "\n" not in str(caught.value)
