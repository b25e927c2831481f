"""Validation of text-classification data, vectorised over Arrow batches.

Each source batch is normalised to the task's roles (``text``, ``text_pair``, ``label``, ``group``,
``split``), all as UTF-8 strings, and checked with Arrow compute kernels. Only the error path touches
individual values in Python, to name the offending row. Rows are numbered from 1 in each file,
not counting a CSV header.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transferkit.data.sources import SourceFile
from transferkit.errors import DataError, SchemaError

SPLIT_VALUES = ("train", "validation", "test")
MISSING_GROUP = "(missing)"
_INTEGER = re.compile(r"^-?\d+$")


@dataclass
class RowOrigin:
    """Maps a global row index (over all files, in read order) back to a file and its row number."""

    displays: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def add(self, display: str, start: int) -> None:
        """Register that ``display``'s first row has global index ``start``."""
        self.displays.append(display)
        self.starts.append(start)

    def locate(self, index: int) -> str:
        """Return ``'<file>: row <n>'`` for a global row index."""
        position = bisect.bisect_right(self.starts, index) - 1
        return f"{self.displays[position]}: row {index - self.starts[position] + 1}"


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first(mask: pa.Array | pa.ChunkedArray) -> int:
    """Index of the first true value of a boolean mask (nulls count as false), or -1."""
    return int(pc.index(pc.fill_null(mask, False), True).as_py())


Locator = Callable[[int], str]
"""Turns a 0-based index within a batch into ``'<file>: row <n>'``."""


def _utf8(column: pa.Array, name: str, at: Locator) -> pa.Array:
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        for index, value in enumerate(column.to_pylist()):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{at(index)}: column {name!r} is not valid UTF-8 (byte 0x{value[exc.start]:02x}); "
                    "expected UTF-8 text (re-encode the file)"
                ) from None
        raise


def _type_error(column: pa.Array, name: str, at: Locator, expected: str) -> SchemaError:
    index = max(_first(pc.is_valid(column)), 0)
    value = column[index].as_py()
    return SchemaError(f"{at(index)}: column {name!r} holds {column.type} value {_preview(value)}; "
                       f"expected {expected}")


def as_strings(column: pa.Array, name: str, at: Locator, *, numbers: str = "reject") -> pa.Array:
    """Cast a column to UTF-8 strings.

    Args:
        column: Source values.
        name: Source column name (for messages).
        at: Names the file and row of a value (for messages).
        numbers: ``reject`` (text), ``labels`` (integers, booleans, integral floats become their
            decimal string) or ``any`` (every scalar becomes its string form; groups).

    Raises:
        SchemaError: The type is not allowed.
        DataError: Invalid UTF-8.

    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _utf8(column, name, at)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.cast(pa.string())
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.string())
    if numbers == "reject":
        raise _type_error(column, name, at, "strings")
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return column.cast(pa.string())
    if pa.types.is_floating(kind):
        if numbers == "labels":
            fractional = pc.not_equal(column, pc.floor(column))
            index = _first(fractional)
            if index >= 0:
                raise SchemaError(
                    f"{at(index)}: column {name!r} holds the non-integer number {column[index].as_py()}; "
                    "expected class names or integer class ids (regression is not supported)"
                )
            return column.cast(pa.int64()).cast(pa.string())
        return column.cast(pa.string())
    if numbers == "any" and (pa.types.is_temporal(kind) or pa.types.is_decimal(kind)):
        return column.cast(pa.string())
    expected = "class names or integer class ids" if numbers == "labels" else "scalar values"
    raise _type_error(column, name, at, expected)


def _blank(column: pa.Array) -> pa.Array:
    return pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0))


def normalize_batch(batch: pa.RecordBatch, needed: dict[str, str], source: SourceFile,
                    first_row: int) -> pa.RecordBatch:
    """Validate one source batch and return it with role names and string columns.

    Args:
        batch: Batch with source column names.
        needed: Role (``text``, ``text_pair``, ``label``, ``group``, ``split``) -> source column.
        source: The file the batch came from.
        first_row: 0-based row number of the batch's first row within the file.

    Raises:
        SchemaError: A value has the wrong type or an unexpected split value.
        DataError: Empty text, missing label, invalid UTF-8.

    """

    def at(index: int) -> str:
        return f"{source.display}: row {first_row + index + 1}"

    arrays: dict[str, pa.Array] = {}
    for role in ("text", "text_pair"):
        if role in needed:
            column = as_strings(batch.column(needed[role]), needed[role], at)
            index = _first(_blank(column))
            if index >= 0:
                value = column[index].as_py()
                kind = "missing" if value is None else "empty"
                raise DataError(f"{at(index)}: {kind} text in column {needed[role]!r}; expected a non-empty string")
            arrays[role] = column
    label = as_strings(batch.column(needed["label"]), needed["label"], at, numbers="labels")
    index = _first(_blank(label))
    if index >= 0:
        raise DataError(f"{at(index)}: missing label in column {needed['label']!r}; every row needs a label")
    arrays["label"] = label
    if "group" in needed:
        group = as_strings(batch.column(needed["group"]), needed["group"], at, numbers="any")
        arrays["group"] = pc.fill_null(group, MISSING_GROUP)
    if "split" in needed:
        split = as_strings(batch.column(needed["split"]), needed["split"], at)
        split = pc.utf8_lower(pc.utf8_trim_whitespace(split))
        index = _first(pc.invert(pc.fill_null(pc.is_in(split, value_set=pa.array(SPLIT_VALUES)), False)))
        if index >= 0:
            raise SchemaError(f"{at(index)}: column {needed['split']!r} holds {_preview(split[index].as_py())}; "
                              "expected train, validation or test")
        arrays["split"] = split
    return pa.RecordBatch.from_arrays(list(arrays.values()), names=list(arrays))


def sorted_label_names(labels: pa.ChunkedArray | pa.Array) -> list[str]:
    """The label map: distinct label strings, sorted numerically when all are integers, else by string.

    Integer ids keep their natural order (``2`` before ``10``) so that id ``i`` is label ``"i"`` for the
    common 0..K-1 case.
    """
    names = [str(v) for v in pc.unique(labels).to_pylist() if v is not None]
    if names and all(_INTEGER.match(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def encode_labels(labels: pa.ChunkedArray | pa.Array, names: list[str]) -> np.ndarray:
    """Map label strings to int64 ids (index into ``names``)."""
    ids = pc.index_in(labels, value_set=pa.array(names, pa.string()))
    return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64)


def check_classes(dataset: str, label_column: str, names: list[str], counts: np.ndarray) -> None:
    """Reject data with fewer than two classes.

    Raises:
        SchemaError: Only one class.

    """
    if len(names) < 2:
        only = names[0] if names else "(none)"
        raise SchemaError(f"{dataset}: column {label_column!r} has a single class {only!r} in {int(counts.sum())} "
                          "rows; expected at least 2 classes for classification")


def check_stratifiable(dataset: str, label_column: str, names: list[str], counts: np.ndarray,
                       min_class_count: int) -> None:
    """Reject classes with too few rows to appear in every stratified split.

    Raises:
        DataError: Some class has fewer than ``min_class_count`` rows.

    """
    small = [(names[i], int(counts[i])) for i in np.argsort(counts, kind="stable") if counts[i] < min_class_count]
    if small:
        shown = ", ".join(f"{name!r} ({count})" for name, count in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        raise DataError(
            f"{dataset}: class(es) {shown}{more} in column {label_column!r} have fewer than min_class_count="
            f"{min_class_count} rows, too few to stratify train/validation/test; add examples, drop or merge "
            "those classes, or give your own split column"
        )
