"""Image preprocessing and augmentation for training and inference (Pillow, numpy and torch only).

:class:`ImagePreprocessor` turns the PNG bytes of a prepared dataset (or any image bytes) into the float32
``[3, H, W]`` tensor a model expects: decode, convert grey/RGBA/palette/16-bit to 8-bit RGB (transparent
pixels over a white background), resize the shorter side, centre-crop to ``image_size``, scale to [0, 1]
and normalise with the model's mean and std. It is built from a catalog entry's
:class:`~transferkit.models.catalog.Preprocessing`, from a transformers ``preprocessor_config.json`` or from
the ``preprocessor.json`` transferkit saves next to a model.

:class:`ImageAugmenter` is the training-time variant of the resize step: a random resized crop, an
optional horizontal flip and a small brightness/contrast/saturation jitter. It is off by default and every
random draw comes from a ``numpy.random.Generator`` passed in, so one seed reproduces a sample exactly
(:meth:`ImageAugmenter.rng_for` derives one generator per seed, epoch and example, independent of the order
in which data-loader workers see examples).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from transferkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PREPROCESSOR_FILE = "preprocessor.json"
"""File name transferkit writes next to a saved image model."""
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
RESIZE_MODES = ("shorter_side", "squash")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    """Return a per-channel (R, G, B) tuple from a scalar or a sequence of 1 or 3 numbers."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 3):
        try:
            numbers = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            pass
        else:
            return numbers * 3 if len(numbers) == 1 else numbers  # type: ignore[return-value]
    raise ConfigError(f"{name}={value!r}: expected a number or a list of 1 or 3 numbers (one per RGB channel)")


@dataclass(frozen=True)
class ImagePreprocessConfig:
    """How image bytes become a model input tensor.

    Attributes:
        image_size: Output height and width in pixels (square).
        resize_size: Shorter side after resizing, before the centre crop (``shorter_side`` mode). ``None``
            means ``image_size``: square images are not cropped, longer sides are cropped to the square.
        resize_mode: ``shorter_side`` (keep the aspect ratio, then centre-crop) or ``squash`` (resize straight
            to ``image_size`` x ``image_size``, distorting the aspect ratio; what ViT-style processors do).
        mean: Per-channel mean subtracted after rescaling.
        std: Per-channel standard deviation divided by after subtracting the mean.
        rescale_factor: Multiplier from 8-bit pixel values to the model's range (1/255 gives [0, 1]).
        resample: Pillow resampling filter name (``bilinear``, ``bicubic``, ``nearest``, ``lanczos``...).
        background: RGB colour that transparent pixels are composited over.

    """

    image_size: int = 224
    resize_size: int | None = None
    resize_mode: str = "shorter_side"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1.0 / 255.0
    resample: str = "bilinear"
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"image_size={self.image_size!r}: expected a positive integer (pixels)")
        if self.resize_size is not None:
            if isinstance(self.resize_size, bool) or not isinstance(self.resize_size, int):
                raise ConfigError(f"resize_size={self.resize_size!r}: expected an integer (pixels) or None")
            if self.resize_size < self.image_size:
                raise ConfigError(f"resize_size={self.resize_size} is smaller than image_size={self.image_size}; "
                                  "the centre crop needs resize_size >= image_size")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode={self.resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise ConfigError(f"std={self.std}: every channel's std must be a positive number")
        if any(not math.isfinite(m) for m in self.mean):
            raise ConfigError(f"mean={self.mean}: every channel's mean must be a finite number")
        if not (isinstance(self.rescale_factor, int | float) and self.rescale_factor > 0):
            raise ConfigError(f"rescale_factor={self.rescale_factor!r}: expected a positive number")
        if self.resample not in RESAMPLE:
            raise ConfigError(f"resample={self.resample!r}: expected one of {', '.join(RESAMPLE)}")
        background = tuple(self.background)
        if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
            raise ConfigError(f"background={self.background!r}: expected three integers in 0-255 (RGB)")
        object.__setattr__(self, "background", background)

    @property
    def shorter_side(self) -> int:
        """The shorter side after resizing (before the crop)."""
        return self.resize_size if self.resize_size is not None else self.image_size

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form written to ``preprocessor.json``."""
        data = asdict(self)
        data.update(mean=list(self.mean), std=list(self.std), background=list(self.background),
                    format_version=FORMAT_VERSION, kind="image")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = PREPROCESSOR_FILE) -> ImagePreprocessConfig:
        """Build a config from :meth:`to_dict` output.

        Raises:
            ConfigError: Unknown keys or invalid values (the message names ``where``).

        """
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k not in ("format_version", "kind")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown image preprocessing field(s) {', '.join(unknown)}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    @classmethod
    def from_catalog(cls, preprocessing: Any) -> ImagePreprocessConfig:
        """Build a config from a catalog entry's ``Preprocessing`` (``kind='image'``).

        Raises:
            ConfigError: The catalog preprocessing is not an image one.

        """
        if getattr(preprocessing, "kind", None) != "image" or not getattr(preprocessing, "image_size", None):
            raise ConfigError(f"catalog preprocessing {preprocessing!r} is not image preprocessing")
        return cls(
            image_size=int(preprocessing.image_size),
            mean=preprocessing.mean if preprocessing.mean is not None else IMAGENET_MEAN,
            std=preprocessing.std if preprocessing.std is not None else IMAGENET_STD,
        )

    @classmethod
    def from_hf_dict(cls, data: Mapping[str, Any], where: str = HF_PREPROCESSOR_FILE) -> ImagePreprocessConfig:
        """Translate a transformers image-processor config (ViT, ResNet, ConvNeXt, EfficientNet, BiT...).

        ``size: {height, width}`` means a direct resize (``squash``), or a resize then a centre crop to
        ``crop_size`` when ``do_center_crop`` is set; ``size: {shortest_edge}`` with ``crop_pct`` (ConvNeXt,
        ResNet) means a resize of the shorter side to ``shortest_edge / crop_pct`` and a crop to
        ``shortest_edge``; with ``crop_size`` (CLIP, BiT) a resize to ``shortest_edge`` and a crop to
        ``crop_size``.

        Raises:
            ConfigError: Missing or non-square sizes, or invalid values (the message names ``where``).

        """
        def square(value: Any, key: str) -> int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, Mapping):
                if "shortest_edge" in value:
                    return int(value["shortest_edge"])
                height, width = value.get("height"), value.get("width")
                if isinstance(height, int) and height == width:
                    return height
            raise ConfigError(f"{where}: {key}={value!r}; expected a square size (height == width) or shortest_edge")

        size = data.get("size")
        if size is None:
            raise ConfigError(f"{where}: no 'size'; cannot tell the model's input size")
        crop = data.get("crop_size")
        do_crop = bool(data.get("do_center_crop", crop is not None))
        shortest = isinstance(size, Mapping) and "shortest_edge" in size
        edge = square(size, "size")
        if shortest and data.get("crop_pct") is not None and not (do_crop and crop is not None):
            image_size, resize_size, mode = edge, int(edge / float(data["crop_pct"])), "shorter_side"
        elif do_crop and crop is not None:
            image_size, resize_size, mode = square(crop, "crop_size"), edge, "shorter_side"
        elif shortest:
            image_size, resize_size, mode = edge, None, "shorter_side"
        else:
            image_size, resize_size, mode = edge, None, "squash"
        normalize = data.get("do_normalize", True)
        rescale = data.get("rescale_factor", 1.0 / 255.0) if data.get("do_rescale", True) else 1.0
        resample = data.get("resample", 2)
        try:
            return cls(
                image_size=image_size, resize_size=resize_size, resize_mode=mode,
                mean=data.get("image_mean", IMAGENET_MEAN) if normalize else (0.0, 0.0, 0.0),
                std=data.get("image_std", IMAGENET_STD) if normalize else (1.0, 1.0, 1.0),
                rescale_factor=float(rescale),
                resample=_HF_RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else str(resample),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


class ImagePreprocessor:
    """Turn image bytes into normalised ``float32`` tensors ``[3, image_size, image_size]``."""

    def __init__(self, config: ImagePreprocessConfig | None = None) -> None:
        self.config = config or ImagePreprocessConfig()
        self._mean = torch.tensor(self.config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.config.std, dtype=torch.float32).view(3, 1, 1)
        self._resample = RESAMPLE[self.config.resample]

    def __repr__(self) -> str:
        return f"ImagePreprocessor({self.config!r})"

    @classmethod
    def from_catalog(cls, preprocessing: Any) -> ImagePreprocessor:
        """Build from a catalog entry's ``Preprocessing``."""
        return cls(ImagePreprocessConfig.from_catalog(preprocessing))

    @classmethod
    def from_dir(cls, path: str | Path) -> ImagePreprocessor:
        """Build from a model directory (``preprocessor.json``, else transformers' ``preprocessor_config.json``).

        Raises:
            ConfigError: Neither file exists, or the one found is unreadable or invalid.

        """
        root = Path(path)
        for name, build in ((PREPROCESSOR_FILE, ImagePreprocessConfig.from_dict),
                            (HF_PREPROCESSOR_FILE, ImagePreprocessConfig.from_hf_dict)):
            file = root / name
            if file.is_file():
                try:
                    data = json.loads(file.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise ConfigError(f"{file}: unreadable preprocessing config ({exc})") from exc
                if not isinstance(data, Mapping):
                    raise ConfigError(f"{file}: expected a JSON object")
                return cls(build(data, str(file)))
        raise ConfigError(f"{root}: no {PREPROCESSOR_FILE} or {HF_PREPROCESSOR_FILE}; cannot tell how to "
                          "preprocess images for this model")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``preprocessor.json``."""
        return self.config.to_dict()

    def decode(self, data: bytes, where: str = "image") -> Image.Image:
        """Decode image bytes to an 8-bit ``L`` (grey) or ``RGB`` Pillow image.

        Grey stays single-channel until :meth:`to_tensor` (cheaper to resize); 16-bit grey is scaled to 8
        bits; alpha and palette transparency are composited over ``background``; other modes become RGB.

        Raises:
            DataError: The bytes are empty or not a decodable image (the message names ``where``).

        """
        if not data:
            raise DataError(f"{where}: empty image (0 bytes)")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                return self._to_8bit(image)
        except DataError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise DataError(f"{where}: cannot decode image ({text})") from exc

    def _to_8bit(self, image: Image.Image) -> Image.Image:
        mode = image.mode
        if mode in ("L", "RGB"):
            return image.copy()
        if mode == "1":
            return image.convert("L")
        if mode.startswith("I;16") or mode in ("I", "F"):
            pixels = np.asarray(image, dtype=np.float64)
            top = 65535.0 if mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
            return Image.fromarray(np.rint(np.clip(pixels, 0, top) * (255.0 / top)).astype(np.uint8), "L")
        if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*self.config.background, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize (shorter side or squash) and centre-crop to ``image_size`` x ``image_size``."""
        size = self.config.image_size
        if self.config.resize_mode == "squash":
            return image.resize((size, size), self._resample)
        width, height = image.size
        short = self.config.shorter_side
        scale = short / min(width, height)
        new_w, new_h = max(short, round(width * scale)), max(short, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), self._resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        if (left, top, new_w, new_h) != (0, 0, size, size):
            image = image.crop((left, top, left + size, top + size))
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Convert an 8-bit ``L``/``RGB`` image to a normalised ``float32`` tensor ``[3, H, W]``."""
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = np.broadcast_to(pixels[:, :, None], (*pixels.shape, 3))
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        return (tensor * self.config.rescale_factor - self._mean) / self._std

    def __call__(
        self,
        data: bytes,
        where: str = "image",
        *,
        augmenter: ImageAugmenter | None = None,
        rng: np.random.Generator | None = None,
    ) -> torch.Tensor:
        """Preprocess one image; with an enabled ``augmenter`` its random crop replaces resize + centre crop.

        Args:
            data: Image bytes (PNG from a prepared dataset, or any format Pillow decodes).
            where: Names the image in error messages (``train.parquet row 12``).
            augmenter: Training-time augmentation; ``None`` or a disabled one gives the evaluation transform.
            rng: Random generator for the augmenter (required when it is enabled).

        Returns:
            A ``float32`` tensor ``[3, image_size, image_size]``.

        Raises:
            DataError: Undecodable bytes.

        """
        image = self.decode(data, where)
        if augmenter is not None and augmenter.enabled:
            if rng is None:
                raise ConfigError("augmentation needs a numpy Generator (rng=...), e.g. ImageAugmenter.rng_for()")
            image = augmenter(image, self.config.image_size, rng, resample=self._resample)
        else:
            image = self.resize(image)
        return self.to_tensor(image)

    def batch(self, images: Sequence[bytes], where: str = "image") -> torch.Tensor:
        """Preprocess several images (evaluation transform) into ``[B, 3, image_size, image_size]``."""
        size = self.config.image_size
        if not images:
            return torch.empty((0, 3, size, size), dtype=torch.float32)
        return torch.stack([self(data, f"{where} {i}") for i, data in enumerate(images)])


_JITTERS = ("brightness", "contrast", "saturation")


def _range(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected a (min, max) pair of numbers") from None
    if not (low < lo <= hi <= high) or not all(math.isfinite(v) for v in (lo, hi)):
        raise ConfigError(f"{name}=({lo}, {hi}): expected {low} < min <= max <= {high}")
    return lo, hi


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; ``AugmentConfig()`` is off (``enabled=False``).

    Attributes:
        enabled: Apply augmentation at all. When False the evaluation transform is used.
        crop_scale: Range of the crop's area as a fraction of the image area (random resized crop).
        crop_ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip: Flip horizontally with probability 0.5. Turn off for digits, text and other images whose
            meaning changes when mirrored (:meth:`for_digits`).
        brightness: Brightness factor drawn from ``[1 - b, 1 + b]`` (0 turns it off).
        contrast: Contrast factor drawn from ``[1 - c, 1 + c]``.
        saturation: Saturation factor drawn from ``[1 - s, 1 + s]`` (no effect on grey images).
        seed: Base seed of :meth:`ImageAugmenter.rng_for`.

    """

    enabled: bool = False
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", _range("crop_scale", self.crop_scale, 0.0, 1.0))
        object.__setattr__(self, "crop_ratio", _range("crop_ratio", self.crop_ratio, 0.0, math.inf))
        for name in _JITTERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value!r}: expected a jitter strength in [0, 1)")
        if not isinstance(self.enabled, bool) or not isinstance(self.flip, bool):
            raise ConfigError(f"enabled={self.enabled!r}, flip={self.flip!r}: expected booleans")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r}: expected a non-negative integer")

    @classmethod
    def for_digits(cls, seed: int = 0) -> AugmentConfig:
        """Mild augmentation for digits and other orientation-sensitive images: no flip, little cropping."""
        return cls(enabled=True, crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), flip=False, brightness=0.1,
                   contrast=0.1, saturation=0.0, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for training summaries)."""
        data = asdict(self)
        data.update(crop_scale=list(self.crop_scale), crop_ratio=list(self.crop_ratio))
        return data


class ImageAugmenter:
    """Random resized crop, horizontal flip and colour jitter driven by an explicit numpy Generator."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def __repr__(self) -> str:
        return f"ImageAugmenter({self.config!r})"

    @property
    def enabled(self) -> bool:
        """Whether this augmenter changes images at all."""
        return self.config.enabled

    def rng_for(self, epoch: int = 0, index: int = 0) -> np.random.Generator:
        """A generator determined by the config seed, the epoch and the example index only."""
        return np.random.default_rng([self.config.seed, epoch, index])

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Draw a crop box ``(left, top, right, bottom)`` with area and aspect ratio in the configured ranges.

        Up to ten draws are tried; if none fits inside the image the largest centred box whose aspect ratio
        is within range is used.
        """
        area = width * height
        log_lo, log_hi = math.log(self.config.crop_ratio[0]), math.log(self.config.crop_ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.config.crop_scale)
            ratio = math.exp(rng.uniform(log_lo, log_hi))
            crop_w = round(math.sqrt(target * ratio))
            crop_h = round(math.sqrt(target / ratio))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left = int(rng.integers(0, width - crop_w + 1))
                top = int(rng.integers(0, height - crop_h + 1))
                return left, top, left + crop_w, top + crop_h
        ratio = width / height
        if ratio < self.config.crop_ratio[0]:
            crop_w, crop_h = width, round(width / self.config.crop_ratio[0])
        elif ratio > self.config.crop_ratio[1]:
            crop_w, crop_h = round(height * self.config.crop_ratio[1]), height
        else:
            crop_w, crop_h = width, height
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return left, top, left + crop_w, top + crop_h

    def __call__(
        self,
        image: Image.Image,
        size: int,
        rng: np.random.Generator,
        *,
        resample: Image.Resampling = Image.Resampling.BILINEAR,
    ) -> Image.Image:
        """Return an augmented ``size`` x ``size`` copy of ``image`` (an ``L`` or ``RGB`` Pillow image).

        The draws happen in a fixed order (crop, flip, brightness, contrast, saturation) so that a generator
        in a given state always gives the same result.
        """
        config = self.config
        box = self.crop_box(*image.size, rng)
        out = image.resize((size, size), resample, box=box)
        if config.flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for name, enhancer in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                               ("saturation", ImageEnhance.Color)):
            strength = getattr(config, name)
            if strength <= 0:
                continue
            factor = rng.uniform(1.0 - strength, 1.0 + strength)
            if name == "saturation" and out.mode != "RGB":
                continue  # grey images have no saturation; the draw above keeps the sequence aligned
            out = enhancer(out).enhance(factor)
        return out
