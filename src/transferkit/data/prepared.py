"""The prepared-dataset contract shared by every step after data prep.

A prepared directory holds ``train.parquet``, ``validation.parquet`` and ``test.parquet``;
``labels.json`` (a JSON list of label names, index = id, sorted); ``schema.json`` (task, source, column
mapping, ``format_version``) and ``stats.json``. The split columns depend on ``schema.json``'s task:

- ``text-classification``: ``text`` (string), ``label`` (int64 id into ``labels.json``), ``label_name``
  (string) and, when present in the source, ``text_pair`` and ``group``;
- ``image-classification``: ``image`` (PNG bytes), ``label`` (int64 id), ``label_name`` (string),
  ``width`` and ``height`` (int32 pixels) and ``mode`` (Pillow mode: ``L``, ``RGB``, ``RGBA``...);
- ``summarization`` and ``instruction``: ``source`` (the input text), ``instruction`` (string, empty when
  none) and ``target`` (the reference output); ``labels.json`` is an empty list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from transferkit.errors import PreparedDataError
from transferkit.tasks import DEFAULT_TASK, get_task

SPLITS = ("train", "validation", "test")
FORMAT_VERSION = 1
REQUIRED_FILES = (*(f"{s}.parquet" for s in SPLITS), "labels.json", "schema.json")


@dataclass
class PreparedDataset:
    """Read access to a prepared dataset directory."""

    path: Path
    labels: list[str]
    schema: dict[str, Any]
    _tables: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        """Name of the task the data was prepared for (``schema.json``; see :func:`transferkit.tasks.get_task`)."""
        return str(self.schema.get("task", DEFAULT_TASK))

    @property
    def has_text_pair(self) -> bool:
        """Whether examples are text pairs."""
        return bool(self.schema.get("text_pair_column"))

    @property
    def has_group(self) -> bool:
        """Whether a slice/group column is present."""
        return bool(self.schema.get("group_column"))

    def table(self, split: str) -> pa.Table:
        """Return one split as a pyarrow table (cached)."""
        if split not in SPLITS:
            raise PreparedDataError(f"{self.path}: unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._tables:
            file = self.path / f"{split}.parquet"
            try:
                self._tables[split] = pq.read_table(file)
            except Exception as exc:
                raise PreparedDataError(f"{file}: unreadable Parquet ({exc})") from exc
        return self._tables[split]

    def _require(self, split: str, column: str) -> pa.Table:
        table = self.table(split)
        if column not in table.column_names:
            raise PreparedDataError(f"{self.path / (split + '.parquet')}: no {column!r} column in this {self.task} "
                                    "dataset")
        return table

    def texts(self, split: str) -> list[str]:
        """The ``text`` column of a split."""
        return self._require(split, "text").column("text").to_pylist()

    def images(self, split: str) -> list[bytes]:
        """The ``image`` column (PNG bytes) of a split."""
        return self._require(split, "image").column("image").to_pylist()

    def label_names(self, split: str) -> list[str]:
        """The ``label_name`` column of a split."""
        return self._require(split, "label_name").column("label_name").to_pylist()

    def text_pairs(self, split: str) -> list[str] | None:
        """The ``text_pair`` column of a split, or None."""
        table = self.table(split)
        return table.column("text_pair").to_pylist() if "text_pair" in table.column_names else None

    def label_ids(self, split: str) -> list[int]:
        """The integer ``label`` column of a split."""
        return [int(v) for v in self.table(split).column("label").to_pylist()]

    def groups(self, split: str) -> list[str] | None:
        """The ``group`` column of a split, or None."""
        table = self.table(split)
        return table.column("group").to_pylist() if "group" in table.column_names else None


def load_prepared(path: str | Path) -> PreparedDataset:
    """Open and check a prepared dataset directory.

    Raises:
        PreparedDataError: A required file is missing, the task is unknown, or labels and splits disagree.

    """
    root = Path(path)
    if not root.is_dir():
        raise PreparedDataError(f"{root}: prepared dataset directory not found")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise PreparedDataError(f"{root}: not a prepared dataset, missing {', '.join(missing)}")
    try:
        labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
        schema = json.loads((root / "schema.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PreparedDataError(f"{root}: labels.json or schema.json is not valid JSON ({exc})") from exc
    if not isinstance(schema, dict):
        raise PreparedDataError(f"{root / 'schema.json'}: expected a JSON object")
    task = get_task(PreparedDataset(root, [], schema))
    if not isinstance(labels, list) or len(labels) < task.min_labels or not all(isinstance(x, str) for x in labels):
        raise PreparedDataError(f"{root / 'labels.json'}: expected a JSON list of at least {task.min_labels} label "
                                f"names ({task.name})")
    dataset = PreparedDataset(root, labels, schema)
    for split in SPLITS:
        columns = dataset.table(split).column_names
        for column in task.required_columns:
            if column not in columns:
                raise PreparedDataError(f"{root / (split + '.parquet')}: missing column {column!r}")
    return dataset
