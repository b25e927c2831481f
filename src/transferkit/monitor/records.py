"""The sampled records the serving side posts to the monitor, and the late labels of ``monitor feedback``."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import MonitorError


@dataclass(frozen=True)
class Record:
    """One sampled request item as the server saw it.

    Attributes:
        request_id: Client or server request id (joins late labels).
        embedding: Pooled embedding (the classification head's input).
        prediction: Predicted class id.
        confidence: Top softmax probability.
        features: Input features named like the baseline's (``length``, ``unk_rate``; ``width``, ...).
        group: Optional group attribute of the request (slices and bias).
    """

    request_id: str
    embedding: np.ndarray
    prediction: int
    confidence: float
    features: dict[str, float]
    group: str | None = None


def parse_record(raw: Any, row: int, labels: list[str], dim: int) -> Record:
    """Validate one posted JSON record.

    ``prediction`` may be a class id or a label name; ``length`` at top level is read as the ``length`` feature.

    Raises:
        MonitorError: Naming the row and field and what was expected.
    """
    where = f"records[{row}]"
    if not isinstance(raw, dict):
        raise MonitorError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    request_id = raw.get("request_id")
    if not isinstance(request_id, str | int) or str(request_id) == "":
        raise MonitorError(f"{where}.request_id: expected a non-empty string")
    embedding = raw.get("embedding")
    try:
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise MonitorError(f"{where}.embedding: expected a list of {dim} numbers") from None
    if vector.shape[0] != dim or not np.all(np.isfinite(vector)):
        raise MonitorError(f"{where}.embedding: expected {dim} finite numbers (the baseline's embedding width), "
                           f"got {vector.shape[0]}")
    prediction = raw.get("prediction")
    if isinstance(prediction, str) and prediction in labels:
        prediction = labels.index(prediction)
    if isinstance(prediction, bool) or not isinstance(prediction, int) or not 0 <= prediction < len(labels):
        raise MonitorError(f"{where}.prediction: expected a class id in [0, {len(labels)}) or one of {labels}, "
                           f"got {prediction!r}")
    confidence = raw.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
        raise MonitorError(f"{where}.confidence: expected a probability in [0, 1], got {confidence!r}")
    features = dict(raw.get("features") or {})
    if "length" in raw:
        features["length"] = raw["length"]
    for name, value in features.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise MonitorError(f"{where}.features.{name}: expected a finite number, got {value!r}")
    group = raw.get("group")
    if group is not None and not isinstance(group, str):
        raise MonitorError(f"{where}.group: expected a string or null, got {type(group).__name__}")
    return Record(str(request_id), vector, int(prediction), float(confidence),
                  {k: float(v) for k, v in features.items()}, group)


def read_feedback(path: str | Path) -> list[tuple[str, str]]:
    """``(request_id, label)`` pairs from a CSV (header ``request_id,label``) or JSON Lines file.

    Raises:
        MonitorError: Missing file, column or value, naming the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MonitorError(f"{path}: cannot read feedback file ({exc.strerror})") from exc
    rows: list[tuple[int, Any]] = []  # (line number, row)
    if path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise MonitorError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
    else:
        reader = csv.DictReader(text.splitlines())
        missing = {"request_id", "label"} - set(reader.fieldnames or [])
        if missing:
            raise MonitorError(f"{path}: missing column(s) {sorted(missing)}; expected header request_id,label")
        rows = [(reader.line_num, row) for row in reader]
    pairs = []
    for number, row in rows:
        if not isinstance(row, dict) or not str(row.get("request_id") or "") or not str(row.get("label") or ""):
            raise MonitorError(f"{path}:{number}: expected a non-empty request_id and label")
        pairs.append((str(row["request_id"]), str(row["label"])))
    if not pairs:
        raise MonitorError(f"{path}: no feedback rows")
    return pairs
