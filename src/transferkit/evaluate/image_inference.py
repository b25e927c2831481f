"""Batched, device-agnostic inference of image classifiers for evaluation and forgetting checks.

Images stay encoded (PNG bytes from a prepared dataset) until their batch is due: each batch is decoded
and preprocessed with the model's :class:`~transferkit.data.transforms.ImagePreprocessor` (the evaluation
transform: resize and centre crop, no augmentation), so memory holds one batch of tensors at a time.

Stage features for representation drift come from forward hooks. A stage of
:func:`transferkit.models.vision.named_stage_groups` is a set of parameter names; its output is read from
the modules that hold only that stage's parameters (the largest such modules, e.g. a ResNet stage or the
MBConv blocks of an EfficientNet stage), taking the one that runs last in the forward pass. Outputs are
global-average-pooled over their spatial (or token) axes, so every stage gives one vector per image.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from transferkit.errors import ModelError
from transferkit.evaluate.inference import _progress, select_device

logger = logging.getLogger(__name__)

HEAD_STAGE = "head"
THUMBNAIL_SIZE = 96


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def pixel_batches(preprocessor: Any, images: Sequence[bytes], *, batch_size: int, device: Any, desc: str,
                  where: str, progress: bool) -> Iterator[Any]:
    """Preprocess ``images`` batch by batch (evaluation transform) into tensors on ``device``, with progress.

    Raises:
        DataError: An image cannot be decoded (the message names ``where`` and the row).

    """
    import torch

    spans = _batches(len(images), batch_size)
    with _progress(len(spans), desc, progress) as bar:
        for start, stop in spans:
            yield torch.stack([preprocessor(images[i], f"{where} row {i}") for i in range(start, stop)]).to(device)
            bar.update(1)


def _logits(model: Any, pixel_values: Any) -> Any:
    output = model(pixel_values=pixel_values)
    return output.logits if hasattr(output, "logits") else output[0]


def predict_image_proba(
    model: Any,
    preprocessor: Any,
    images: Sequence[bytes],
    *,
    batch_size: int = 32,
    device: Any = None,
    desc: str = "predict",
    where: str = "image",
    progress: bool = True,
) -> np.ndarray:
    """Class probabilities (softmax of the logits) of an image classifier, in input order.

    Args:
        model: A model from :func:`transferkit.models.vision.load_image_classifier` (``forward(pixel_values)``
            returns an output with ``logits``).
        preprocessor: The :class:`~transferkit.data.transforms.ImagePreprocessor` the model expects.
        images: Encoded images (PNG bytes, or any format Pillow decodes).
        batch_size: Images per forward pass.
        device: Torch device (default: :func:`~transferkit.evaluate.inference.select_device`).
        desc: Progress-bar label.
        where: Names the images in decoding errors (``.../test.parquet``); the row number is appended.
        progress: Show a tqdm progress bar.

    Returns:
        Array of shape (len(images), num_labels), float64.

    Raises:
        DataError: An image cannot be decoded (the message names the row).

    """
    import torch

    device = device or select_device()
    model.to(device).eval()
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for pixels in pixel_batches(preprocessor, images, batch_size=batch_size, device=device, desc=desc,
                                    where=where, progress=progress):
            logits = _logits(model, pixels)
            chunks.append(torch.softmax(logits.detach().to("cpu", torch.float64), dim=-1).numpy())
    if not chunks:
        return np.zeros((0, int(model.config.num_labels)), dtype=np.float64)
    return np.concatenate(chunks, axis=0)


# ------------------------------------------------------------------------------------------------ stages


def stage_modules(model: Any) -> list[tuple[str, list[str]]]:
    """For each stage but the head, the names of the modules whose outputs can stand for that stage.

    A module qualifies when every parameter under it belongs to the stage; for each parameter the largest
    qualifying ancestor is taken. For a transformers ResNet this is one module per stage
    (``resnet.encoder.stages.0``); for EfficientNet-Lite it is the stage's MBConv blocks (the enclosing
    block list also holds other stages). The stage output is the output of the one that runs last.

    Raises:
        ModelError: The model's stages cannot be found (see ``named_stage_groups``).

    """
    from transferkit.models.vision import named_stage_groups

    groups = named_stage_groups(model)
    owner = {param: stage for stage, params in groups for param in params}
    under: dict[str, set[str]] = defaultdict(set)
    for param, stage in owner.items():
        parts = param.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            under[".".join(parts[:depth])].add(stage)
    result: list[tuple[str, list[str]]] = []
    for stage, params in groups:
        if stage == HEAD_STAGE:
            continue
        modules: list[str] = []
        for param in params:
            parts = param.split(".")[:-1]
            chosen = next((".".join(parts[:d]) for d in range(1, len(parts) + 1)
                           if under[".".join(parts[:d])] == {stage}), None)
            if chosen is None:  # a parameter held directly by a shared module: no clean stage output
                raise ModelError(f"{type(model).__name__}: parameter {param} of stage {stage} sits in a module "
                                 "shared with other stages; cannot read that stage's output")
            if chosen not in modules:
                modules.append(chosen)
        result.append((stage, modules))
    if not result:
        raise ModelError(f"{type(model).__name__}: no stages below the head; cannot measure representation drift")
    return result


def _pool(output: Any) -> Any:
    """Global average pool of a stage output to ``[B, C]`` (4-D: spatial mean; 3-D: token mean)."""
    import torch

    if not isinstance(output, torch.Tensor):
        if hasattr(output, "last_hidden_state"):
            output = output.last_hidden_state
        elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
            output = output[0]
        else:
            raise ModelError(f"stage output of type {type(output).__name__} is not a tensor")
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    if output.dim() == 2:
        return output
    return output.flatten(1)


def stage_features(
    model: Any,
    preprocessor: Any,
    images: Sequence[bytes],
    *,
    batch_size: int = 32,
    device: Any = None,
    desc: str = "stage features",
    where: str = "image",
    progress: bool = True,
) -> tuple[list[str], list[np.ndarray]]:
    """Global-average-pooled output of every stage below the head, for each image.

    Args:
        model: An image classifier from :func:`transferkit.models.vision.load_image_classifier`.
        preprocessor: Preprocessing applied to every image.
        images: Encoded images.
        batch_size: Images per forward pass.
        device: Torch device.
        desc: Progress-bar label.
        where: Names the images in decoding errors.
        progress: Show a tqdm progress bar.

    Returns:
        Stage names (stem first, as in ``named_stage_groups``) and one float32 array (n, channels) per stage.

    """
    import torch

    device = device or select_device()
    model.to(device).eval()
    stages = stage_modules(model)
    named = dict(model.named_modules())
    calls: dict[str, tuple[int, Any]] = {}
    counter = [0]

    def hook_for(name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            counter[0] += 1
            calls[name] = (counter[0], _pool(output).detach().float().cpu())

        return hook

    handles = [named[name].register_forward_hook(hook_for(name)) for _, modules in stages for name in modules]
    chunks: list[list[np.ndarray]] = []
    try:
        with torch.inference_mode():
            for pixels in pixel_batches(preprocessor, images, batch_size=batch_size, device=device, desc=desc,
                                        where=where, progress=progress):
                calls.clear()
                _logits(model, pixels)
                batch: list[np.ndarray] = []
                for stage, modules in stages:
                    ran = [calls[m] for m in modules if m in calls]
                    if not ran:
                        raise ModelError(f"{type(model).__name__}: stage {stage} did not run in the forward pass")
                    batch.append(max(ran, key=lambda item: item[0])[1].numpy())
                chunks.append(batch)
    finally:
        for handle in handles:
            handle.remove()
    names = [stage for stage, _ in stages]
    if not chunks:
        return names, [np.zeros((0, 0), dtype=np.float32) for _ in names]
    return names, [np.concatenate([batch[j] for batch in chunks], axis=0) for j in range(len(names))]


# ------------------------------------------------------------------------------------------------ report


def thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Decode image bytes to a small uint8 array (H, W) or (H, W, 3) for contact sheets; no normalisation.

    Undecodable bytes give a grey placeholder instead of an error (the report must not fail on them; the
    prediction step already decoded every image).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("L") if opened.mode in ("1", "L", "I;16", "I", "F") else opened.convert("RGB")
    except Exception:
        return np.full((size // 4, size // 4), 128, dtype=np.uint8)
    if max(image.size) > size:
        image.thumbnail((size, size))
    return np.asarray(image, dtype=np.uint8)
