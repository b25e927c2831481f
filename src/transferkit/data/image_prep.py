"""The data-prep step for image classification: decode, validate, split, profile, write atomically.

Every image is decoded fully with Pillow and stored re-encoded as PNG (size kept; palette, CMYK and other
colour spaces become RGB, grey+alpha becomes L) so that later steps read one format. The prepared
directory follows :mod:`transferkit.data.prepared`: ``image`` (PNG bytes), ``label`` (int64 id into
``labels.json``), ``label_name``, ``width``, ``height`` and ``mode`` per split, plus ``labels.json``,
``schema.json``, ``stats.json``, ``report.md``/``report.html`` and ``contact_sheets/*.png``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from transferkit.data import image_stats
from transferkit.data import splits as splitting
from transferkit.data.images import DecodedImage, ImageItem, ImageSource, decode_image, open_image_source, read_item
from transferkit.data.prepare import DataPrepConfig, DataPrepResult, _check_out, split_metrics, write_prepared
from transferkit.data.prepared import FORMAT_VERSION, SPLITS
from transferkit.data.sources import SourceFile
from transferkit.data.validate import check_classes, check_stratifiable, encode_labels, sorted_label_names
from transferkit.errors import DataError

logger = logging.getLogger(__name__)


def _sample(items: list[ImageItem], max_rows: int | None, seed: int) -> list[ImageItem]:
    if max_rows is None or len(items) <= max_rows:
        return items
    rows = np.sort(np.random.default_rng(seed).choice(len(items), size=max_rows, replace=False))
    logger.info("Using a seeded sample of %d of %d images (max_rows)", max_rows, len(items))
    return [items[i] for i in rows]


def decode_items(items: list[ImageItem], min_image_size: int) -> list[DecodedImage]:
    """Decode, check and re-encode every item, in order.

    Raises:
        DataError: An unreadable, corrupt, unsupported or too small image (the message names it).

    """
    from tqdm.auto import tqdm

    decoded: list[DecodedImage] = []
    for item in tqdm(items, desc="decoding images", unit=" images", disable=None, leave=False):
        image = decode_image(read_item(item), item.where)
        if image.width < min_image_size or image.height < min_image_size:
            raise DataError(f"{item.where}: image is {image.width}x{image.height} px; expected at least "
                            f"{min_image_size} px on each side (min_image_size={min_image_size})")
        decoded.append(image)
    return decoded


def _check_folders(config: DataPrepConfig, names: list[str], counts: np.ndarray) -> None:
    """Class-folder messages name the folder (the generic checks name a label column)."""
    root = config.dataset.rstrip("/")
    if len(names) < 2:
        raise DataError(f"{root}: a single class folder {names[0]!r}; expected at least 2 class folders")
    small = [(names[i], int(counts[i])) for i in np.argsort(counts, kind="stable")
             if counts[i] < config.min_class_count]
    if small:
        name, count = small[0]
        more = f" (and {len(small) - 1} more small class folder(s))" if len(small) > 1 else ""
        raise DataError(f"{root}/{name}: class folder holds {count} image(s), fewer than min_class_count="
                        f"{config.min_class_count}{more}; add images or remove the class folder")


def _full_table(images: list[DecodedImage], ids: np.ndarray, names: list[str]) -> pa.Table:
    return pa.table({
        "image": pa.array([i.png for i in images], pa.binary()),
        "label": pa.array(ids, pa.int64()),
        "label_name": pa.array(names, pa.string()).take(pa.array(ids)),
        "width": pa.array([i.width for i in images], pa.int32()),
        "height": pa.array([i.height for i in images], pa.int32()),
        "mode": pa.array([i.mode for i in images], pa.string()),
    })


def prepare_images(config: DataPrepConfig) -> DataPrepResult:
    """Prepare an image-classification dataset (called by :func:`transferkit.data.prepare.prepare_dataset`).

    Args:
        config: The step configuration of an image-classification task.

    Returns:
        Paths of everything written and the numbers a pipeline component reports.

    Raises:
        ConfigError: Invalid configuration, or ``out`` would replace the input.
        DatasetNotFoundError: The dataset does not exist.
        SchemaError: Missing or mistyped table columns, a single class.
        DataError: Unreadable/corrupt/too small images, empty class folders, classes too small.

    """
    started = time.perf_counter()
    local = Path(config.dataset.removeprefix("file://")).expanduser()
    if "://" not in config.dataset.removeprefix("file://") and not config.dataset.startswith("builtin:"):
        _check_out(config.out, [SourceFile(local, config.dataset, "images")])
    with open_image_source(config.dataset, config.image_column, config.label_column) as source:
        logger.info("Reading %s: %d image(s) from %s", config.dataset, len(source.items), source.kind)
        source_rows = len(source.items)
        items = _sample(source.items, config.max_rows, config.seed)
        images = decode_items(items, config.min_image_size)
    labels = pa.array([item.label for item in items], pa.string())
    names = sorted_label_names(labels)
    ids = encode_labels(labels, names)
    counts = np.bincount(ids, minlength=len(names))
    if source.kind == "folder":
        _check_folders(config, names, counts)
    label_role = config.label_column if source.kind == "table" else "label"
    check_classes(config.dataset, label_role, names, counts)
    check_stratifiable(config.dataset, label_role, names, counts, config.min_class_count)
    indices = splitting.stratified_split(ids, len(names), config.validation_fraction, config.test_fraction,
                                         config.seed, config.dataset)
    # Exact duplicate images (same mode, size and pixels) must not leak from train into evaluation.
    digests = pa.table({"text": pa.array([i.key for i in images], pa.string())})
    keys = splitting.text_keys(digests)
    indices, leakage = splitting.remove_leakage(indices, keys, digests, config.dataset)
    train_duplicates = splitting.within_split_duplicates(indices["train"], keys)
    full = _full_table(images, ids, names)
    tables = {split: full.take(pa.array(indices[split])) for split in SPLITS}
    if leakage.total:
        logger.info("Leakage check: removed %d validation and %d test images identical to an earlier split's",
                    leakage.validation, leakage.test)
    stats = _statistics(config, source, images, tables, names, leakage, train_duplicates, source_rows)
    sheets = image_stats.contact_sheets(tables, names, config.seed)
    stats["contact_sheets"] = sorted(sheets)
    report = image_stats.build_report(stats, tables, sheets)
    return write_prepared(
        config, tables, names, _schema(config, names, tables, source), stats, report, started, source_rows,
        leakage.total, unit="images", metrics=_metrics(stats),
        image_size={"width": dict(stats["image_size"]["width"]), "height": dict(stats["image_size"]["height"])},
        modes=dict(stats["modes"]),
    )


def _statistics(config: DataPrepConfig, source: ImageSource, images: list[DecodedImage],
                tables: dict[str, pa.Table], names: list[str], leakage: splitting.LeakageReport,
                train_duplicates: int, source_rows: int) -> dict[str, Any]:
    from transferkit.data import stats as statistics

    balance = statistics.class_balance(tables, names)
    ratio = statistics.imbalance_ratio(balance)
    modes = image_stats.counts(pa.chunked_array([tables[s]["mode"] for s in SPLITS]))
    converted = Counter(f"{i.source_mode}->{i.mode}" for i in images if i.source_mode != i.mode)
    warning = statistics.imbalance_warning(balance, names, ratio, config.imbalance_warning_ratio, "images")
    warnings = [warning] if warning else []
    if len(modes) > 1:
        warnings.append("mixed image modes: " + ", ".join(f"{m} ({c})" for m, c in modes.items())
                        + "; training converts every image to the model's input mode")
    warnings += statistics.absent_class_warnings(balance, names, "images")
    for warning in warnings:
        logger.warning("%s: %s", config.dataset, warning)
    return {
        "source": config.dataset,
        "source_kind": source.kind,
        "source_files": source.files,
        "task": config.task,
        **statistics.split_summary(tables, names, balance, ratio, leakage, train_duplicates, source_rows),
        "image_size": image_stats.size_stats(tables),
        "modes": modes,
        "source_modes": image_stats.counts([i.source_mode for i in images]),
        "converted_modes": dict(sorted(converted.items())),
        "source_formats": image_stats.counts([i.source_format for i in images]),
        "min_image_size": config.min_image_size,
        "split": {"mode": "stratified", "seed": config.seed, "validation_fraction": config.validation_fraction,
                  "test_fraction": config.test_fraction},
        "warnings": warnings,
    }


def _schema(config: DataPrepConfig, names: list[str], tables: dict[str, pa.Table], source: ImageSource
            ) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "task": config.task,
        "source": config.dataset,
        "source_kind": source.kind,
        "source_files": source.files,
        "image_column": config.image_column if source.kind == "table" else None,
        "label_column": config.label_column if source.kind == "table" else None,
        "image_format": "PNG",
        "columns": {f.name: str(f.type) for f in tables["train"].schema},
        "num_labels": len(names),
        "seed": config.seed,
        "max_rows": config.max_rows,
        "min_image_size": config.min_image_size,
    }


def _metrics(stats: dict[str, Any]) -> dict[str, float]:
    sizes = stats["image_size"]
    return {
        **split_metrics(stats),
        "image_width_min": float(sizes["width"]["min"]),
        "image_width_p50": float(sizes["width"]["p50"]),
        "image_height_min": float(sizes["height"]["min"]),
        "image_height_p50": float(sizes["height"]["p50"]),
        "num_modes": float(len(stats["modes"])),
    }
