"""Matplotlib charts for the evaluation and forgetting reports (Agg backend, returned as figures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_heatmap(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str = "Confusion matrix") -> Any:
    """Heat map of counts (colour = row-normalised rate, so rare classes stay visible)."""
    plt = _plt()
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(3.5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                        color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return fig


def per_class_bars(per_class: Sequence[dict[str, Any]]) -> Any:
    """Grouped bars of precision, recall and F1 per class."""
    plt = _plt()
    names = [row["label"] for row in per_class]
    x = np.arange(len(names))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.6))
    for offset, key in zip((-width, 0, width), ("precision", "recall", "f1"), strict=True):
        ax.bar(x + offset, [row[key] for row in per_class], width, label=key)
    ax.set_xticks(x, labels=names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("Per-class precision / recall / F1")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def reliability_diagram(calibration: dict[str, Any]) -> Any:
    """Accuracy vs confidence per bin against the diagonal, with the count histogram below."""
    plt = _plt()
    edges = np.asarray(calibration["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    # Empty bins get zero-height bars (no accuracy and no gap to draw).
    accuracy = [a if a is not None else 0.0 for a in calibration["accuracy"]]
    confidence = [c if c is not None else 0.0 for c in calibration["confidence"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.8, 5.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centers, accuracy, width=width * 0.95, color="#4c72b0", edgecolor="white", label="accuracy")
    top.bar(centers, np.asarray(confidence) - np.asarray(accuracy), bottom=accuracy, width=width * 0.95,
            color="#dd8452", alpha=0.35, label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram (ECE {calibration['ece']:.3f})")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centers, calibration["counts"], width=width * 0.95, color="#8c8c8c")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    return fig


def roc_pr_curves(roc: dict[str, list[float]], pr: dict[str, list[float]] | None, positive: str) -> Any:
    """ROC and precision-recall curves of a binary classifier side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8), layout="constrained")
    axes[0].plot(roc["fpr"], roc["tpr"])
    axes[0].plot([0, 1], [0, 1], "k--", linewidth=1)
    axes[0].set_xlabel("false positive rate")
    axes[0].set_ylabel("true positive rate")
    axes[0].set_title(f"ROC (positive = {positive})")
    if pr is not None:
        axes[1].plot(pr["recall"], pr["precision"])
        axes[1].set_xlabel("recall")
        axes[1].set_ylabel("precision")
        axes[1].set_title("Precision-recall")
        axes[1].set_ylim(0, 1.02)
    return fig


def slice_bars(slices: dict[str, Any]) -> Any:
    """One bar per slice for the gap metric, with the overall spread marked."""
    plt = _plt()
    metric = slices["gap_metric"]
    rows = slices["slices"]
    names = [f"{r['group']} (n={r['n']})" for r in rows]
    values = [r[metric] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 3.4))
    colors = ["#c44e52" if r["group"] == slices.get("worst") else "#4c72b0" for r in rows]
    ax.bar(range(len(rows)), values, color=colors)
    ax.set_xticks(range(len(rows)), labels=names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    gap = slices.get("gap")
    ax.set_title(f"{metric} by slice" + (f" (largest gap {gap:.3f})" if gap is not None else ""))
    return fig


def before_after(names: Sequence[str], before: Sequence[float], after: Sequence[float], title: str,
                 ylabel: str = "score") -> Any:
    """Paired bars: base model vs fine-tuned model for each measure."""
    plt = _plt()
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(names) + 2), 3.6))
    bars_a = ax.bar(x - 0.2, before, 0.4, label="base model", color="#4c72b0")
    bars_b = ax.bar(x + 0.2, after, 0.4, label="fine-tuned model", color="#dd8452")
    for bars in (bars_a, bars_b):
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, labels=names)
    ax.axhline(0, color="black", linewidth=0.8)
    low = min(0.0, *before, *after)
    ax.set_ylim(low - 0.05 if low < 0 else 0, max(1.0, *before, *after) * 1.1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def similarity_scatter(human: np.ndarray, base: np.ndarray, model: np.ndarray, base_r: float, model_r: float) -> Any:
    """Human score vs cosine similarity for the base and the fine-tuned model."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), layout="constrained")
    for ax, values, r, name in ((axes[0], base, base_r, "base"), (axes[1], model, model_r, "fine-tuned")):
        ax.scatter(human, values, s=6, alpha=0.5)
        ax.set_xlabel("human similarity score")
        ax.set_ylabel("cosine similarity")
        ax.set_title(f"{name} model (r = {r:.3f})")
    return fig


def layer_cka(values: Sequence[float], names: Sequence[str] | None = None) -> Any:
    """Linear CKA between base and fine-tuned representations per layer (or per named stage)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * len(values) + 2), 3.4))
    bars = ax.bar(range(len(values)), values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    if names is None:
        ax.set_xticks(range(len(values)), labels=["emb", *[str(i) for i in range(1, len(values))]])
        ax.set_xlabel("layer (emb = embedding output)")
    else:
        ax.set_xticks(range(len(values)), labels=list(names), rotation=30 if len(values) > 6 else 0)
        ax.set_xlabel("stage (stem = input convolution; outputs global-average-pooled)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear CKA vs base")
    ax.set_title(f"Representation similarity per {'layer' if names is None else 'stage'} (1.0 = unchanged)")
    return fig


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 5) -> Any:
    """A grid of thumbnails (uint8 grey or RGB arrays), each with a short caption above it."""
    plt = _plt()
    n = max(1, len(images))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.15 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        image = images[k]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(captions[k], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def pareto(points: Sequence[dict[str, Any]], x_key: str, y_key: str, label_key: str, title: str) -> Any:
    """Scatter of settings on two axes with each point labelled (used by the forgetting benchmark)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for point in points:
        ax.scatter(point[x_key], point[y_key], s=30)
        ax.annotate(str(point[label_key]), (point[x_key], point[y_key]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig
