"""Triton python-backend model: encoded images (PNG, JPEG, ... bytes) in, normalised ``pixel_values`` out.

Copied into ``<name>_preprocess/<version>/model.py`` with the export's preprocessing settings in
``<version>/preprocessor.json`` (the ``ImagePreprocessConfig`` dict). :func:`preprocess` reproduces
``transferkit.data.transforms.ImagePreprocessor`` with Pillow and numpy only (the serving venv has neither
torch nor transferkit): decode, apply the EXIF orientation, convert grey/16-bit/palette/alpha images to 8-bit
``L`` or ``RGB`` (transparent pixels composited over ``background``), resize (shorter side then centre crop,
or squash), scale with ``rescale_factor`` and normalise with ``mean``/``std``. The unit tests compare it with
``ImagePreprocessor`` on real images.

Each request item is one encoded image (``TYPE_STRING``); raw bytes are what the KServe v2 binary-data
extension and ``tritonclient`` send. JSON clients that cannot send raw bytes may send the image base64
encoded (optionally as a ``data:image/...;base64,`` URL). An image that does not decode fails its own
request with a one-line message; the other requests of the batch are answered normally.
"""

import base64
import binascii
import io
import json
import os

import numpy as np
from PIL import Image, ImageOps

try:  # Only inside Triton; the module is also imported by tests for its preprocessing function.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - depends on the environment
    pb_utils = None

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
DEFAULT_MAX_PIXELS = 40_000_000
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


class ImageInputError(ValueError):
    """An input item is not a decodable image (the message is sent back to the client)."""


class Preprocessing:
    """The ``preprocessor.json`` settings, with the constants of :func:`preprocess` precomputed."""

    def __init__(self, config, max_pixels=DEFAULT_MAX_PIXELS):
        """Read an ``ImagePreprocessConfig`` dict (as written by transferkit's export step)."""
        self.image_size = int(config["image_size"])
        resize = config.get("resize_size")
        self.shorter_side = int(resize) if resize is not None else self.image_size
        self.resize_mode = config.get("resize_mode", "shorter_side")
        self.resample = RESAMPLE[config.get("resample", "bilinear")]
        self.background = tuple(int(c) for c in config.get("background", (255, 255, 255)))
        self.rescale = np.float32(config.get("rescale_factor", 1.0 / 255.0))
        self.mean = np.asarray(config.get("mean", (0.5, 0.5, 0.5)), dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(config.get("std", (0.5, 0.5, 0.5)), dtype=np.float32).reshape(3, 1, 1)
        self.max_pixels = int(max_pixels)


def _to_8bit(image, background):
    mode = image.mode
    if mode in ("L", "RGB"):
        return image.copy()
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.rint(np.clip(pixels, 0, top) * (255.0 / top)).astype(np.uint8), "L")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _resize(image, settings):
    size = settings.image_size
    if settings.resize_mode == "squash":
        return image.resize((size, size), settings.resample)
    width, height = image.size
    short = settings.shorter_side
    scale = short / min(width, height)
    new_w, new_h = max(short, round(width * scale)), max(short, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), settings.resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (left, top, new_w, new_h) != (0, 0, size, size):
        image = image.crop((left, top, left + size, top + size))
    return image


def _maybe_base64(data):
    """The decoded bytes when ``data`` is base64 text (or a base64 data URL), else None."""
    text = data.strip()
    if text.startswith(b"data:") and b";base64," in text[:64]:
        text = text.split(b",", 1)[1]
    try:
        return base64.b64decode(text, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _open(data, settings):
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > settings.max_pixels:
                raise ImageInputError(f"image is {width}x{height} pixels, more than the limit of "
                                      f"{settings.max_pixels} pixels")
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            return _to_8bit(image, settings.background)
    except ImageInputError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageInputError(f"cannot decode image (not a recognised image format, {len(data)} bytes)") from exc
    except Exception as exc:
        text = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ImageInputError(f"cannot decode image ({text})") from exc


def decode(data, settings):
    """Decode encoded image bytes (or their base64 text) to an 8-bit ``L`` or ``RGB`` Pillow image.

    Raises:
        ImageInputError: Empty, too large or undecodable bytes.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data:
        raise ImageInputError("empty image (0 bytes)")
    try:
        return _open(data, settings)
    except ImageInputError:
        decoded = _maybe_base64(data) if len(data) >= 16 else None
        if decoded is None:
            raise
    return _open(decoded, settings)


def preprocess(data, settings):
    """One encoded image to a normalised ``float32`` array ``[3, image_size, image_size]``.

    Args:
        data: Encoded image bytes.
        settings: A :class:`Preprocessing`.

    Raises:
        ImageInputError: The bytes are not a decodable image.
    """
    return normalise(decode(data, settings), settings)


def normalise(image, settings):
    """A decoded 8-bit image (see :func:`decode`) resized and normalised to ``[3, image_size, image_size]``."""
    image = _resize(image, settings)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = np.broadcast_to(pixels[:, :, None], (*pixels.shape, 3))
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    return (chw * settings.rescale - settings.mean) / settings.std


class TritonPythonModel:
    """Decode and normalise every image of every request; a bad image fails only its own request."""

    def initialize(self, args):
        """Read ``preprocessor.json`` from the version folder and the output layout from the config."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, params.get("preprocessor_file", "preprocessor.json")),
                  encoding="utf-8") as handle:
            settings = json.load(handle)
        self.settings = Preprocessing(settings, int(params.get("max_image_pixels", DEFAULT_MAX_PIXELS)))
        self.input_name = config["input"][0]["name"]
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    @staticmethod
    def _error(message):
        # INVALID_ARG makes Triton answer HTTP 400 / gRPC INVALID_ARGUMENT instead of an internal error.
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)

    def execute(self, requests):
        """One response per request: ``[items, 3, S, S]`` or an error naming the bad item."""
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                arrays = []
                for index, item in enumerate(items):
                    try:
                        arrays.append(preprocess(item, self.settings))
                    except ImageInputError as exc:
                        where = f"{self.input_name}[{index}]" if len(items) > 1 else self.input_name
                        raise ImageInputError(f"input '{where}': {exc}") from None
                size = self.settings.image_size
                batch = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), dtype=np.float32)
                tensor = pb_utils.Tensor(self.output_name, batch.astype(self.output_dtype, copy=False))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            except ImageInputError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=self._error(str(exc))))
        return responses
