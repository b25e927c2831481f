"""A real image-classifier export shared by the serving tests (one per test process).

The model is EfficientNet-Lite0 with its ImageNet weights and a new seeded 10-class head at 32x32 pixels
(``tests.helpers.write_image_model``); the data are the scikit-learn digits prepared by the data-prep step;
the export directory is written by the export step (``export_model``: fp32, dynamic int8 and static QDQ
graphs, ``io_spec.json`` with the image preprocessing, ``preprocessor.json``, ``labels.json``).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_SIZE = 32


@dataclass
class ImageExport:
    """Paths of the shared image export and the data it came from."""

    export_dir: Path
    data_dir: Path
    labels: list[str]


_CACHE: dict[str, ImageExport] = {}


_DATA: dict[str, Path] = {}


def _temp_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, True)
    return root


def shared_digits_data() -> Path:
    """The prepared scikit-learn digits (PNG bytes), once per process. Callers must not modify it."""
    if "digits" not in _DATA:
        from tests.helpers import prepare_image_data

        _DATA["digits"] = prepare_image_data(_temp_root("tk-serve-digits-") / "data")
    return _DATA["digits"]


def build_image_export(root: Path, data: Path) -> ImageExport:
    """Write the model and export it under ``root`` (small evaluation and calibration sets)."""
    from tests.helpers import write_image_model
    from transferkit.export import ExportConfig, export_model

    labels = json.loads((data / "labels.json").read_text())
    model_dir = write_image_model(root / "model", labels, image_size=IMAGE_SIZE)
    result = export_model(ExportConfig(model_dir, data, root / "onnx", target="cpu", threads=2, latency_runs=0,
                                       throughput_runs=0, max_drop=100, max_eval_samples=32, calibration_size=16))
    return ImageExport(Path(result.out_dir), data, labels)


def shared_image_export() -> ImageExport:
    """Build once per process into a temp dir removed at exit. Callers must not modify it."""
    if "digits" not in _CACHE:
        _CACHE["digits"] = build_image_export(_temp_root("tk-serve-image-export-"), shared_digits_data())
    return _CACHE["digits"]
