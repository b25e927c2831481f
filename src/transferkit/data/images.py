"""Image-classification sources and validation: class folders, tables of paths or bytes, built-ins.

Three source shapes resolve to one list of :class:`ImageItem` (where it came from, class name, bytes or
a path), then every image is decoded with Pillow, checked and re-encoded as PNG:

- a folder with one sub-folder per class (``ROOT/CLASS/**/*.png``; PNG, JPEG, BMP, GIF or WebP);
- CSV/TSV/JSON Lines/Parquet (a file or a directory of them) with an image column holding paths
  relative to the table file, image bytes, or ``{bytes, path}`` structs (the Hugging Face layout), plus
  the label column;
- ``builtin:NAME`` image datasets (see :mod:`transferkit.data.builtin`).

Errors name the image file, or the table file and row (rows numbered from 1, not counting a CSV header).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from transferkit.data.sources import (
    SourceFile,
    _is_hidden,
    detect_format,
    download_s3,
    iter_batches,
    open_source,
)
from transferkit.data.validate import as_strings
from transferkit.errors import DataError, DatasetNotFoundError, SchemaError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}
IMAGE_FORMATS = frozenset(IMAGE_SUFFIXES.values())
EXPECTED = "a PNG, JPEG, BMP, GIF or WebP image"
KEPT_MODES = frozenset({"1", "L", "RGB", "RGBA", "I;16"})
"""Modes stored as they are; the others are converted (see :func:`target_mode`)."""


def target_mode(mode: str) -> str:
    """The mode an image is stored in: grey stays grey, palette/CMYK/other colour spaces become RGB."""
    if mode in KEPT_MODES:
        return mode
    if mode in {"LA", "La", "I", "F", "I;16B", "I;16L", "I;16N"}:
        return "L"
    if mode == "RGBa":
        return "RGBA"
    return "RGB"  # P, PA, CMYK, YCbCr, LAB, HSV, RGBX


@dataclass
class ImageItem:
    """One example before decoding: where it came from, its class, and its bytes or file path."""

    where: str
    label: str
    data: bytes | None = None
    path: Path | None = None


@dataclass
class ImageSource:
    """All examples of a source plus what messages and the schema need to know about it."""

    items: list[ImageItem]
    kind: str  # folder | table | builtin
    files: int
    label_name: str  # "column 'label'" or "class folders" (for messages)
    skipped: list[str] = field(default_factory=list)


@dataclass
class DecodedImage:
    """An image re-encoded as PNG, with what the statistics need."""

    png: bytes
    width: int
    height: int
    mode: str
    source_mode: str
    source_format: str
    key: str  # digest of mode, size and pixels: equal images have equal keys


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_image(data: bytes, where: str) -> DecodedImage:
    """Decode one image fully, normalise its mode and re-encode it as PNG (size kept).

    JPEG/WebP EXIF orientation is applied, so width and height are those of the upright image. GIF and
    WebP animations keep their first frame.

    Raises:
        DataError: The bytes are not a complete image of a supported format.

    """
    from PIL import Image, ImageOps

    if not data:
        raise DataError(f"{where}: empty image (0 bytes); expected {EXPECTED}")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            source_format = str(opened.format)
            if source_format not in IMAGE_FORMATS:
                raise DataError(f"{where}: {source_format} image; expected {EXPECTED}")
            opened.load()
            source_mode = opened.mode
            image = ImageOps.exif_transpose(opened) or opened
            mode = target_mode(image.mode)
            if image.mode != mode:
                if image.mode in {"P", "PA"} and "transparency" in image.info:
                    image = image.convert("RGBA").convert(mode)  # resolve the palette before dropping alpha
                else:
                    image = image.convert(mode)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: not a readable image ({_short(exc)}); expected {EXPECTED}") from None
    digest = hashlib.blake2b(f"{mode}:{image.width}x{image.height}:".encode(), digest_size=16)
    digest.update(image.tobytes())
    return DecodedImage(buffer.getvalue(), image.width, image.height, mode, source_mode, source_format,
                        digest.hexdigest())


def read_item(item: ImageItem) -> bytes:
    """The raw bytes of an item (from the table cell or the file).

    Raises:
        DataError: The referenced file is missing or unreadable.

    """
    if item.data is not None:
        return item.data
    assert item.path is not None
    try:
        return item.path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{item.where}: image file not found ({item.path})") from None
    except OSError as exc:
        raise DataError(f"{item.where}: cannot read image file ({exc.strerror or type(exc).__name__})") from None


# ---------------------------------------------------------------------------------------------------
# Class folders


def looks_like_image_folder(root: Path) -> bool:
    """Whether a directory is a class-folder image dataset (it holds images and no table files)."""
    has_images = False
    for path in root.rglob("*"):
        if not path.is_file() or _is_hidden(path, root):
            continue
        with contextlib.suppress(DataError):
            detect_format(path)
            return False
        has_images = has_images or path.suffix.lower() in IMAGE_SUFFIXES
    return has_images


def folder_items(root: Path, display_root: str) -> ImageSource:
    """One item per image below ``root/CLASS/`` (recursive, sorted, hidden files skipped).

    Raises:
        DataError: No class folders, an image outside any class folder, or an empty class folder.

    """
    display_root = display_root.rstrip("/")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p, root))
    stray = sorted(p.name for p in root.iterdir()
                   if p.is_file() and not _is_hidden(p, root) and p.suffix.lower() in IMAGE_SUFFIXES)
    if stray:
        raise DataError(f"{display_root}/{stray[0]}: image outside a class folder; expected "
                        f"{display_root}/CLASS/IMAGE (one sub-folder per class)")
    if not classes:
        raise DataError(f"{display_root}: no class folders; expected one sub-folder of images per class")
    items: list[ImageItem] = []
    skipped: list[str] = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not _is_hidden(p, root))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        others = [p.relative_to(root).as_posix() for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        skipped.extend(others)
        if not images:
            found = f"found only: {', '.join(Path(o).name for o in others[:5])}" if others else "it is empty"
            raise DataError(f"{display_root}/{folder.name}: empty class folder ({found}); expected "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))} files")
        items.extend(ImageItem(f"{display_root}/{p.relative_to(root).as_posix()}", folder.name, path=p)
                     for p in images)
    if skipped:
        logger.warning("%s: ignoring %d file(s) that are not images: %s", display_root, len(skipped),
                       ", ".join(skipped[:5]))
    return ImageSource(items, "folder", len(items), "class folders", skipped)


# ---------------------------------------------------------------------------------------------------
# Tables of paths or bytes


def _missing(column: pa.Array) -> pa.Array:
    if pa.types.is_string(column.type):
        return pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0))
    if pa.types.is_binary(column.type):
        return pc.or_kleene(pc.is_null(column), pc.equal(pc.binary_length(column), 0))
    return pc.is_null(column)


def _image_cells(column: pa.Array, source: SourceFile, name: str, at) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    """Split an image column into (bytes or None, path string or None) per row."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        column, kind = column.cast(pa.binary()), pa.binary()
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        column, kind = column.cast(pa.string()), pa.string()
    if pa.types.is_struct(kind) and {"bytes", "path"} <= {kind.field(i).name for i in range(kind.num_fields)}:
        data = column.field("bytes").cast(pa.binary()).to_pylist()
        paths = column.field("path").cast(pa.string()).to_pylist()
        return [d or None for d in data], [None if d else p for d, p in zip(data, paths, strict=True)]
    if pa.types.is_binary(kind) and source.format in {"csv", "tsv"}:
        column, kind = as_strings(column, name, at), pa.string()  # CSV cells are text: paths
    if pa.types.is_null(kind):
        return [None] * len(column), [None] * len(column)
    if pa.types.is_binary(kind):
        return column.to_pylist(), [None] * len(column)
    if pa.types.is_string(kind):
        return [None] * len(column), column.to_pylist()
    index = max(int(pc.index(pc.is_valid(column), True).as_py()), 0)
    raise SchemaError(f"{at(index)}: column {name!r} holds {column.type} values; expected image paths (strings), "
                      "image bytes or {bytes, path} structs")


def table_items(files: list[SourceFile], image_column: str, label_column: str) -> list[ImageItem]:
    """One item per table row; paths are resolved relative to the table file's folder.

    Raises:
        SchemaError: Missing columns or an image column of the wrong type.
        DataError: Malformed tables, rows without an image or without a label.

    """
    needed = {"image": image_column, "label": label_column}
    items: list[ImageItem] = []
    for source in files:
        first = 0
        for batch in iter_batches(source, needed):

            def at(index: int, first: int = first, source: SourceFile = source) -> str:
                return f"{source.display}: row {first + index + 1}"

            labels = as_strings(batch.column(label_column), label_column, at, numbers="labels")
            blank = pc.or_kleene(pc.is_null(labels), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(labels)), 0))
            index = int(pc.index(pc.fill_null(blank, False), True).as_py())
            if index >= 0:
                raise DataError(f"{at(index)}: missing label in column {label_column!r}; every row needs a label")
            column = batch.column(image_column)
            index = int(pc.index(pc.fill_null(_missing(column), False), True).as_py()) \
                if not pa.types.is_struct(column.type) else -1
            if index >= 0:
                raise DataError(f"{at(index)}: missing image in column {image_column!r}; expected an image path "
                                "or image bytes")
            data, paths = _image_cells(column, source, image_column, at)
            for offset, (label, blob, path) in enumerate(zip(labels.to_pylist(), data, paths, strict=True)):
                if blob is not None:
                    items.append(ImageItem(f"{at(offset)}: column {image_column!r}", label, data=blob))
                elif path and path.strip():
                    local = Path(path.strip()).expanduser()
                    local = local if local.is_absolute() else source.path.parent / local
                    items.append(ImageItem(f"{at(offset)}: image {path.strip()!r}", label, path=local))
                else:
                    raise DataError(f"{at(offset)}: missing image in column {image_column!r}; expected an image "
                                    "path or image bytes")
            first += batch.num_rows
    return items


# ---------------------------------------------------------------------------------------------------
# Resolution


def _builtin_files(uri: str) -> list[SourceFile]:
    from transferkit.data.builtin import builtin_path, get_builtin

    dataset = get_builtin(uri)
    if dataset.kind != "images":
        raise DataError(f"{uri}: a text dataset ({dataset.description}); expected an image dataset such as "
                        "builtin:digits for task image-classification")
    return [SourceFile(builtin_path(uri), uri, "parquet")]


def _image_or_table(key: str) -> bool:
    if Path(key).suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        detect_format(Path(key))
    except DataError:
        return False
    return True


@contextlib.contextmanager
def open_image_source(uri: str, image_column: str, label_column: str) -> Iterator[ImageSource]:
    """Resolve a dataset URI to image items (S3 downloads live in a temporary directory until exit).

    Raises:
        DatasetNotFoundError: Nothing exists at the URI.
        SchemaError: Missing or mistyped table columns.
        DataError: Empty class folders, images outside class folders, rows without image or label.

    """
    if uri.startswith("builtin:"):
        # Built-ins are cached as tables with fixed columns, whatever the configured column names.
        yield ImageSource(table_items(_builtin_files(uri), "image", "label"), "builtin", 1, "column 'label'")
        return
    if uri.startswith("s3://"):
        # Class folders or a table with its image files under a prefix: the whole tree is downloaded so
        # relative paths in a table resolve as they do locally.
        display = uri.rstrip("/")
        with tempfile.TemporaryDirectory(prefix="transferkit-s3-") as tmp:
            root = Path(tmp)
            download_s3(uri, root, accept=_image_or_table)
            if looks_like_image_folder(root):
                yield folder_items(root, display)
                return
            tables = [SourceFile(p, f"{display}/{p.relative_to(root).as_posix()}", detect_format(p))
                      for p in sorted(root.rglob("*"))
                      if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES and not _is_hidden(p, root)]
            items = table_items(tables, image_column, label_column)
            if not items:
                raise DataError(f"{uri}: no data rows")
            yield ImageSource(items, "table", len(tables), f"column {label_column!r}")
        return
    local = Path(uri.removeprefix("file://")).expanduser()
    if "://" not in uri or uri.startswith("file://"):
        if not local.exists():
            raise DatasetNotFoundError(f"{uri}: file or directory not found")
        if local.is_dir() and looks_like_image_folder(local):
            yield folder_items(local, uri)
            return
    with open_source(uri) as files:
        items = table_items(files, image_column, label_column)
        if not items:
            where = files[0].display if len(files) == 1 else f"{uri} ({len(files)} files)"
            raise DataError(f"{where}: no data rows")
        yield ImageSource(items, "table", len(files), f"column {label_column!r}")
