"""How the served model's preprocessing turns raw inputs into graph feeds and monitored input features.

The tasks hand these out (:meth:`transferkit.tasks.base.Task.monitor_inputs`); the baseline and the offline
replay use them so that they see inputs exactly as the server does: the exported ``tokenizer.json`` with the
``tokenizers`` library (as the python-backend tokenizer does) or the serving image preprocessing code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import MonitorError

BATCH = 32


class TextMonitorInputs:
    """Texts (or ``(text, text_pair)`` tuples) -> token-id feeds; features ``length`` and ``unk_rate``.

    Args:
        export_dir: Export directory with ``io_spec.json`` and ``tokenizer/tokenizer.json``.
    """

    features = ("length", "unk_rate")

    def __init__(self, export_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        from transferkit.export.io_spec import IOSpec

        spec = IOSpec.load(export_dir)
        path = Path(export_dir) / (spec.tokenizer_dir or "tokenizer") / "tokenizer.json"
        if not path.is_file():
            raise MonitorError(f"{path}: missing; a text export must hold its tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        if spec.max_length:
            self.tokenizer.enable_truncation(max_length=spec.max_length)
        else:
            self.tokenizer.no_truncation()
        unk = getattr(self.tokenizer.model, "unk_token", None)
        self.unk_id = self.tokenizer.token_to_id(unk) if unk else None
        pad_id = spec.preprocessing.get("pad_token_id", 0)
        self.inputs = [(t.name, np.dtype(t.dtype), pad_id if t.name == "input_ids" else 0) for t in spec.inputs]

    def batches(self, items: Sequence[Any]) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``(feed, features)`` per batch of ``BATCH`` items, each batch padded to its longest sequence."""
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        for start in range(0, len(items), BATCH):
            chunk = [tuple(_text(v) for v in i) if isinstance(i, list | tuple) else _text(i)
                     for i in items[start : start + BATCH]]
            encodings = self.tokenizer.encode_batch(chunk)
            width = max(len(e.ids) for e in encodings)
            feed = {}
            for name, dtype, pad in self.inputs:
                if name not in fields:
                    raise MonitorError(f"io_spec.json: graph input {name!r} is not a tokenizer output")
                array = np.full((len(encodings), width), pad, dtype=dtype)
                for row, encoding in enumerate(encodings):
                    values = getattr(encoding, fields[name])
                    array[row, : len(values)] = values
                feed[name] = array
            yield feed, text_features(encodings, self.unk_id)


def _text(value: Any) -> Any:
    """Text as ``str`` (a payload logged with the binary-data extension holds UTF-8 bytes)."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def text_features(encodings: Sequence[Any], unk_id: int | None) -> dict[str, np.ndarray]:
    """Token count and unknown-token rate of each ``tokenizers`` encoding."""
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.float64)
    unk = np.array([sum(1 for t in e.ids if t == unk_id) if unk_id is not None else 0 for e in encodings],
                   dtype=np.float64)
    return {"length": lengths, "unk_rate": unk / np.maximum(lengths, 1)}


class ImageMonitorInputs:
    """Encoded images -> ``pixel_values`` feeds; features ``width``, ``height`` and ``brightness`` (0-1).

    Args:
        export_dir: Export directory with ``io_spec.json`` and ``preprocessor.json``.
    """

    features = ("width", "height", "brightness")

    def __init__(self, export_dir: str | Path) -> None:
        import json

        from transferkit.export.io_spec import IOSpec
        from transferkit.serve.triton_models import image_preprocess_model as served

        spec = IOSpec.load(export_dir)
        path = Path(export_dir) / "preprocessor.json"
        try:
            self.settings = served.Preprocessing(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise MonitorError(f"{path}: expected the export's image preprocessing settings ({exc})") from exc
        self.served = served
        self.input_name = spec.inputs[0].name

    def batches(self, items: Sequence[bytes]) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``(feed, features)`` per batch of ``BATCH`` encoded images."""
        for start in range(0, len(items), BATCH):
            pixels, features = [], {"width": [], "height": [], "brightness": []}
            for data in items[start : start + BATCH]:
                image = self.served.decode(data, self.settings)
                features["width"].append(image.size[0])
                features["height"].append(image.size[1])
                features["brightness"].append(float(np.asarray(image.convert("L"), dtype=np.float32).mean()) / 255)
                pixels.append(self.served.normalise(image, self.settings))
            yield ({self.input_name: np.stack(pixels).astype(np.float32)},
                   {k: np.asarray(v, dtype=np.float64) for k, v in features.items()})
