"""Source-task sets for the forgetting check: similarity pairs, labelled texts or plain probe texts.

A source set is a built-in (``builtin:lee-similarity``, ``builtin:movie-sentiment``), a prepared dataset
directory (its test split) or a file (CSV, TSV, Parquet, JSON Lines) whose columns decide its kind:

- ``text_a, text_b, score``: similarity pairs with human scores (mode ``similarity``);
- ``text, label``: a labelled source task (mode ``source-task``);
- ``text``: probe texts (mode ``representation-drift``).

Image models take image source sets: an image built-in (``builtin:digits``, ``builtin:mnist-5k``,
``builtin:fashion-mnist``), a prepared image-classification directory (its test split) or a Parquet file with
an ``image`` column of encoded image bytes (plus ``label`` for a labelled set). Labelled images have kind
``labelled`` (like labelled texts); unlabelled ones have kind ``images``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import DataError, DatasetNotFoundError, SchemaError

PAIR_COLUMNS = ("text_a", "text_b", "score")
MIN_PAIRS = 3
KINDS = ("pairs", "labelled", "texts", "images")


@dataclass
class SourceSet:
    """An in-memory source set.

    Attributes:
        name: The reference it was loaded from.
        kind: ``pairs``, ``labelled``, ``texts`` or ``images``.
        texts: ``labelled``/``texts``: the texts. ``pairs``: the unique texts of all pairs (each embedded once).
            Empty for image sets.
        pair_index: ``pairs``: for each pair, indices into ``texts`` of text_a and text_b.
        scores: ``pairs``: human similarity score per pair.
        labels: ``labelled``: label name per text (or per image).
        images: Image sets: encoded image bytes (PNG in prepared data), one per example.

    """

    name: str
    kind: str
    texts: list[str]
    pair_index: list[tuple[int, int]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)

    @property
    def modality(self) -> str:
        """``image`` for image sets, else ``text``."""
        return "image" if self.kind == "images" or self.images else "text"

    @property
    def size(self) -> int:
        """Number of pairs, labelled examples, texts or images."""
        if self.kind == "pairs":
            return len(self.pair_index)
        return len(self.images) if self.modality == "image" else len(self.texts)

    def describe(self) -> str:
        """One-line description for reports."""
        if self.modality == "image":
            if self.kind == "labelled":
                return f"{self.name}: {len(self.images)} labelled images, {len(set(self.labels))} labels"
            return f"{self.name}: {len(self.images)} probe images"
        if self.kind == "pairs":
            return f"{self.name}: {len(self.pair_index)} scored pairs over {len(self.texts)} unique texts"
        if self.kind == "labelled":
            return f"{self.name}: {len(self.texts)} labelled texts, {len(set(self.labels))} labels"
        return f"{self.name}: {len(self.texts)} probe texts"


def _read_table(path: Path) -> Any:
    """Read a file as a pandas DataFrame of strings (CSV/TSV) or native types (Parquet/JSON Lines)."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            # Strings only, no NA guessing: score parsing below reports the exact bad row.
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read source set ({type(exc).__name__}: {exc})") from exc
    raise DataError(f"{path}: unsupported source-set format {suffix!r}; expected .csv, .tsv, .parquet or .jsonl")


def _text(value: Any, where: str, row: int, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{where}: row {row}: column {column!r} must be a non-empty string, got {value!r}")
    return value


def _score(value: Any, where: str, row: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: row {row}: score {value!r} is not a number") from None
    if not math.isfinite(number):
        raise SchemaError(f"{where}: row {row}: score {value!r} is not a finite number")
    return number


def pairs_from_rows(name: str, text_a: list[Any], text_b: list[Any], scores: list[Any]) -> SourceSet:
    """Build and validate a pairs set; texts are de-duplicated so that each is embedded only once.

    Rows are numbered from 1 (the first data row, after any header).
    """
    unique: dict[str, int] = {}
    index: list[tuple[int, int]] = []
    values: list[float] = []
    for row, (a, b, s) in enumerate(zip(text_a, text_b, scores, strict=True), start=1):
        ta = _text(a, name, row, "text_a")
        tb = _text(b, name, row, "text_b")
        values.append(_score(s, name, row))
        index.append((unique.setdefault(ta, len(unique)), unique.setdefault(tb, len(unique))))
    if len(index) < MIN_PAIRS:
        raise DataError(f"{name}: {len(index)} pair(s); at least {MIN_PAIRS} are needed for a correlation")
    if len(set(values)) < 2:
        raise DataError(f"{name}: all scores are equal ({values[0]}); a correlation needs varying scores")
    return SourceSet(name, "pairs", list(unique), pair_index=index, scores=values)


def images_from_rows(name: str, images: list[Any], labels: list[Any] | None) -> SourceSet:
    """Build and validate an image set (``labelled`` when labels are given, else ``images``).

    Rows are numbered from 1. The bytes are only checked to be non-empty here; decoding errors surface
    when the images are preprocessed (the message names the row).
    """
    if not images:
        raise DataError(f"{name}: no rows")
    for row, value in enumerate(images, start=1):
        if not isinstance(value, bytes | bytearray) or not value:
            raise SchemaError(f"{name}: row {row}: column 'image' must hold non-empty encoded image bytes, "
                              f"got {type(value).__name__}")
    if labels is None:
        return SourceSet(name, "images", [], images=[bytes(v) for v in images])
    names = ["" if v is None else str(v) for v in labels]
    if any(not label.strip() for label in names):
        row = next(i for i, label in enumerate(names, start=1) if not label.strip())
        raise SchemaError(f"{name}: row {row}: empty label")
    return SourceSet(name, "labelled", [], labels=names, images=[bytes(v) for v in images])


def _from_frame(name: str, frame: Any) -> SourceSet:
    columns = [str(c) for c in frame.columns]
    if "image" in columns:
        return images_from_rows(name, frame["image"].tolist(),
                                frame["label"].tolist() if "label" in columns else None)
    if any(c in columns for c in PAIR_COLUMNS):
        missing = [c for c in PAIR_COLUMNS if c not in columns]
        if missing:
            raise SchemaError(
                f"{name}: missing column(s) {', '.join(missing)}; a similarity pairs file needs "
                f"{', '.join(PAIR_COLUMNS)} (found {', '.join(columns)})"
            )
        return pairs_from_rows(name, frame["text_a"].tolist(), frame["text_b"].tolist(), frame["score"].tolist())
    if "text" in columns:
        texts = [_text(v, name, i, "text") for i, v in enumerate(frame["text"].tolist(), start=1)]
        if not texts:
            raise DataError(f"{name}: no rows")
        if "label" in columns:
            labels = [str(v) for v in frame["label"].tolist()]
            if any(not label.strip() for label in labels):
                row = next(i for i, label in enumerate(labels, start=1) if not label.strip())
                raise SchemaError(f"{name}: row {row}: empty label")
            return SourceSet(name, "labelled", texts, labels=labels)
        return SourceSet(name, "texts", texts)
    raise SchemaError(
        f"{name}: unrecognised columns ({', '.join(columns)}); expected text_a,text_b,score (similarity pairs), "
        "text,label (labelled source task), text (probe texts) or image[,label] (image sets)"
    )


def load_source(reference: str | Path) -> SourceSet:
    """Load a source set from a built-in name, a prepared dataset directory or a file.

    Raises:
        DatasetNotFoundError: Nothing exists at the reference.
        SchemaError: Missing columns, non-numeric scores, empty texts (message names the row).
        DataError: Fewer than 3 pairs, constant scores, unreadable file.

    """
    from transferkit.data.builtin import get_builtin, is_builtin, load_builtin

    ref = str(reference)
    if is_builtin(ref):
        dataset = get_builtin(ref)
        table = load_builtin(ref)
        if dataset.kind == "similarity-pairs":
            return pairs_from_rows(ref, table.column("text_a").to_pylist(), table.column("text_b").to_pylist(),
                                   table.column("score").to_pylist())
        if dataset.kind == "classification":
            return SourceSet(ref, "labelled", table.column("text").to_pylist(),
                             labels=[str(v) for v in table.column("label").to_pylist()])
        if dataset.kind == "images":
            return images_from_rows(ref, table.column("image").to_pylist(),
                                    [str(v) for v in table.column("label").to_pylist()])
        raise DataError(f"{ref}: built-in of kind {dataset.kind!r} cannot be a source set")
    path = Path(ref).expanduser()
    if path.is_dir():
        from transferkit.data.prepared import load_prepared
        from transferkit.tasks import get_task

        prepared = load_prepared(path)
        task = get_task(prepared)
        names = prepared.labels
        # A task without labels (generation) gets none and says what it offers instead.
        ids = prepared.label_ids("test") if "label" in task.required_columns else []
        if any(i < 0 or i >= len(names) for i in ids):
            bad = next(i for i in ids if i < 0 or i >= len(names))
            raise SchemaError(f"{path / 'test.parquet'}: label id {bad} is outside labels.json "
                              f"(0..{len(names) - 1})")
        return task.source_set(str(path), prepared, [names[i] for i in ids])
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: source set not found (expected builtin:NAME, a prepared dataset "
                                   "directory or a .csv/.tsv/.parquet/.jsonl file)")
    return _from_frame(str(path), _read_table(path))
