"""Image dataset statistics (sizes, modes, formats, class balance), contact sheets and the data report."""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from transferkit.data.splits import SPLITS
from transferkit.data.stats import add_class_balance, labels_cell, summarize
from transferkit.reporting import Report

SHEET_COLUMNS = 4
SHEET_IMAGES = SHEET_COLUMNS * SHEET_COLUMNS
SHEET_CELL = 64
SHEET_PAD = 2
MAX_SHEETS = 100
MAX_SIZES_SHOWN = 10


def counts(values: list[str] | pa.ChunkedArray) -> dict[str, int]:
    """Occurrences of each value, most frequent first (ties by value)."""
    items = values.to_pylist() if isinstance(values, pa.ChunkedArray) else values
    return dict(sorted(Counter(items).items(), key=lambda kv: (-kv[1], kv[0])))


def size_stats(tables: dict[str, pa.Table]) -> dict[str, Any]:
    """Width/height summaries and the most common ``WxH`` sizes over all splits."""
    widths = np.concatenate([tables[s]["width"].to_numpy() for s in SPLITS])
    heights = np.concatenate([tables[s]["height"].to_numpy() for s in SPLITS])
    sizes = counts([f"{w}x{h}" for w, h in zip(widths.tolist(), heights.tolist(), strict=True)])
    return {
        "width": summarize(widths),
        "height": summarize(heights),
        "distinct_sizes": len(sizes),
        "common_sizes": dict(list(sizes.items())[:MAX_SIZES_SHOWN]),
    }


def _as_rgb(image: Any) -> Any:
    """An RGB copy for display: 16-bit grey scaled to 8 bits, transparency over white."""
    from PIL import Image

    if image.mode == "I;16":
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _thumbnail(png: bytes) -> Any:
    """Fit an image into one sheet cell: small images are enlarged by a whole factor (sharp pixels)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as opened:
        image = _as_rgb(opened)
    largest = max(image.size)
    if largest <= SHEET_CELL // 2:
        factor = SHEET_CELL // largest
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    image.thumbnail((SHEET_CELL, SHEET_CELL), Image.Resampling.LANCZOS)
    return image


def contact_sheet(images: list[bytes]) -> bytes:
    """A PNG grid (up to 4x4) of thumbnails, each centred in a 64x64 cell."""
    from PIL import Image

    shown = images[:SHEET_IMAGES]
    columns = min(SHEET_COLUMNS, max(1, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    step = SHEET_CELL + SHEET_PAD
    sheet = Image.new("RGB", (columns * step + SHEET_PAD, rows * step + SHEET_PAD), (235, 235, 235))
    for position, png in enumerate(shown):
        thumb = _thumbnail(png)
        x = SHEET_PAD + (position % columns) * step + (SHEET_CELL - thumb.width) // 2
        y = SHEET_PAD + (position // columns) * step + (SHEET_CELL - thumb.height) // 2
        sheet.paste(thumb, (x, y))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def sheet_name(index: int, label: str) -> str:
    """File name (under ``contact_sheets/``) of a class's contact sheet: index plus a safe slug."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")[:40] or "class"
    return f"contact_sheets/{index:03d}-{slug}.png"


def contact_sheets(tables: dict[str, pa.Table], names: list[str], seed: int) -> dict[str, bytes]:
    """A seeded sample of up to 16 train images per class (first 100 classes) as contact-sheet PNGs."""
    train = tables["train"]
    ids = train["label"].to_numpy()
    rng = np.random.default_rng(seed)
    sheets: dict[str, bytes] = {}
    for label_id, name in enumerate(names[:MAX_SHEETS]):
        rows = np.flatnonzero(ids == label_id)
        if len(rows) == 0:
            continue
        picked = np.sort(rng.choice(rows, size=min(SHEET_IMAGES, len(rows)), replace=False))
        images = train["image"].take(pa.array(picked)).to_pylist()
        sheets[sheet_name(label_id, name)] = contact_sheet(images)
    return sheets


def _size_figure(tables: dict[str, pa.Table]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transferkit.data.stats import _integer_bins

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, column, color in zip(axes, ("width", "height"), ("#4c72b0", "#55a868"), strict=True):
        values = np.concatenate([tables[s][column].to_numpy() for s in SPLITS])
        ax.hist(values, bins=_integer_bins(values), color=color)
        ax.set_xlabel(f"{column} (px)")
        ax.set_ylabel("images")
        ax.set_title(f"Image {column}s")
    return fig


def build_report(stats: dict[str, Any], tables: dict[str, pa.Table], sheets: dict[str, bytes]) -> Report:
    """The Markdown/HTML data report: summary, class balance, sizes, modes, contact sheets, warnings."""
    report = Report(f"Data preparation: {stats['source']}")
    rows = stats["rows"]
    sizes = stats["image_size"]
    report.heading("Summary")
    report.table(["item", "value"], [
        ["task", stats["task"]],
        ["source", f"{stats['source_kind']} ({stats['source_files']} file(s))"],
        ["source images read", stats["source_rows"]],
        ["images used", stats["rows_used"]],
        ["train / validation / test", f"{rows['train']} / {rows['validation']} / {rows['test']}"],
        ["split", stats["split"]["mode"] + f" (seed {stats['split']['seed']})"],
        ["labels", labels_cell(stats)],
        ["duplicate images removed from validation / test (leakage)",
         f"{stats['duplicates_removed']['validation']} / {stats['duplicates_removed']['test']}"],
        ["duplicate images within train (kept)", stats["duplicates_within_train"]],
        ["class imbalance (largest / smallest)", f"{stats['imbalance_ratio']:g}"],
    ])
    add_class_balance(report, stats, "Images")
    balance, names = stats["class_balance"], stats["labels"]
    report.heading("Image sizes")
    report.table(["", "min", "mean", "p50", "p95", "p99", "max"], [
        [name, *(sizes[name][k] for k in ("min", "mean", "p50", "p95", "p99", "max"))]
        for name in ("width", "height")
    ])
    report.paragraph(f"{sizes['distinct_sizes']} distinct size(s); most common: "
                     + ", ".join(f"{size} ({count})" for size, count in sizes["common_sizes"].items()))
    report.figure("image_sizes.png", _size_figure(tables), "Histograms of image widths and heights")
    report.heading("Modes and formats")
    report.table(["stored mode", "images"], [[mode, count] for mode, count in stats["modes"].items()])
    report.table(["source format", "images"], [[fmt, count] for fmt, count in stats["source_formats"].items()])
    if stats["converted_modes"]:
        report.paragraph("Converted: " + ", ".join(f"{k} ({v})" for k, v in stats["converted_modes"].items()),
                         css_class="note")
    report.heading("Contact sheets")
    report.paragraph(f"Up to {SHEET_IMAGES} random train images per class (seed {stats['split']['seed']}).",
                     css_class="note")
    by_name = {sheet_name(i, n): n for i, n in enumerate(names)}
    for name, png in sheets.items():
        label = by_name[name]
        report.paragraph(f"{label}: {balance['train'][label]} train images")
        report.image(name, png, f"Contact sheet of class {label}")
    if len(names) > len(sheets):
        report.paragraph(f"Contact sheets are shown for the first {len(sheets)} of {len(names)} classes.",
                         css_class="note")
    if stats["warnings"]:
        report.heading("Warnings")
        for warning in stats["warnings"]:
            report.paragraph(warning, css_class="fail")
    return report
