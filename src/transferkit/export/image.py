"""Image classifiers for export: loading with label checks, preprocessing to numpy and ``torch.onnx.export``.

The graph takes ``pixel_values`` float32 ``[batch, 3, S, S]`` (what :class:`~transferkit.data.transforms.
ImagePreprocessor` produces; ``S`` is its ``image_size``) and returns ``logits`` ``[batch, num_labels]``. Only
the batch axis is dynamic: CNNs such as EfficientNet-Lite pad for a fixed input size, and serving resizes
every image to ``S`` before the graph runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.export.onnx_export import export_graph, reconcile_labels
from transferkit.models.catalog import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

PIXEL_VALUES = "pixel_values"


@dataclass
class ExportableImageModel:
    """An image classifier ready for export: PyTorch module in eval mode, its preprocessing and label names."""

    resolved: ResolvedModel
    model: Any
    preprocessor: Any  # transferkit.data.transforms.ImagePreprocessor
    labels: list[str]

    @property
    def image_size(self) -> int:
        """Height and width of the graph input."""
        return int(self.preprocessor.config.image_size)

    @property
    def input_shape(self) -> list[int]:
        """Graph input shape, -1 for the dynamic batch axis."""
        return [-1, 3, self.image_size, self.image_size]

    @property
    def model_type(self) -> str:
        """``efficientnet-lite0`` for transferkit's EfficientNet-Lite, else the transformers ``model_type``."""
        from transferkit.models.vision import ARCHITECTURE_KEY, LITE_ARCHITECTURES

        architecture = self.resolved.config.get(ARCHITECTURE_KEY)
        if architecture in LITE_ARCHITECTURES:
            return str(architecture)
        if self.resolved.entry is not None and self.resolved.entry.packaged_weights is not None:
            return self.resolved.entry.architecture
        return self.resolved.model_type


def load_exportable_image(
    reference: str | Path,
    data_labels: list[str],
    data_dir: Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ExportableImageModel:
    """Load an image classifier and its preprocessing for export, checking labels against the dataset.

    Raises:
        ModelError: No weights or the model does not load.
        ConfigError: No usable ``preprocessor.json`` (or transformers ``preprocessor_config.json``).
        ExportError: Labels that differ from the dataset's ``labels.json``.

    """
    from transferkit.models.vision import load_image_classifier, load_image_preprocessor

    resolved = resolve_model(reference, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    preprocessor = load_image_preprocessor(resolved)
    model = load_image_classifier(resolved, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        model.set_attn_implementation("eager")  # transformers vision transformers; CNNs have no switch
    except (AttributeError, ValueError) as exc:
        logger.debug("%s: keeping attention implementation (%s)", resolved.path, exc)
    model.eval()
    labels = reconcile_labels(resolved, int(model.config.num_labels), data_labels, data_dir)
    return ExportableImageModel(resolved, model, preprocessor, labels)


def preprocess_images(preprocessor: Any, images: Sequence[bytes], where: str) -> np.ndarray:
    """Preprocess encoded images (evaluation transform) into a float32 array ``[N, 3, S, S]``.

    Args:
        preprocessor: An ``ImagePreprocessor``.
        images: Encoded image bytes (PNG from a prepared dataset).
        where: Prefix of error messages, e.g. the Parquet file (``... row 12: cannot decode image``).

    Raises:
        DataError: An image does not decode.

    """
    size = int(preprocessor.config.image_size)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for index, data in enumerate(images):
        out[index] = preprocessor(data, f"{where} row {index}").numpy()
    return out


def export_image_onnx(exportable: ExportableImageModel, sample: np.ndarray, path: Path, opset: int) -> Path:
    """Export ``pixel_values -> logits`` with a dynamic batch axis (legacy TorchScript exporter).

    Args:
        exportable: Loaded model.
        sample: Real preprocessed images ``[B, 3, S, S]`` used for tracing.
        path: Output ``.onnx`` file.
        opset: ONNX opset version.

    Raises:
        ExportError: The exporter or the ONNX checker failed.

    """
    import torch

    model = exportable.model

    class ImageLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values).logits

    return export_graph(ImageLogits().eval(), {PIXEL_VALUES: np.ascontiguousarray(sample, dtype=np.float32)},
                        [PIXEL_VALUES], {PIXEL_VALUES: {0: "batch"}}, path, opset, exportable.resolved.path)
