"""Dataset statistics (class balance, lengths, token lengths, truncation) and the data report."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transferkit.data.splits import SPLITS
from transferkit.reporting import Report

logger = logging.getLogger(__name__)

PERCENTILES = (50, 95, 99)
TOKENIZE_CHUNK = 2048


def summarize(values: np.ndarray) -> dict[str, float]:
    """Min, mean, p50/p95/p99 and max of a numeric array (zeros when empty)."""
    if len(values) == 0:
        return {"min": 0.0, "mean": 0.0, **{f"p{q}": 0.0 for q in PERCENTILES}, "max": 0.0}
    out = {"min": float(values.min()), "mean": round(float(values.mean()), 2)}
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[f"p{q}"] = round(float(v), 2)
    out["max"] = float(values.max())
    return out


def class_balance(tables: dict[str, pa.Table], names: list[str]) -> dict[str, dict[str, int]]:
    """Rows per label name in each split."""
    balance = {}
    for split in SPLITS:
        ids = tables[split]["label"].to_numpy()
        counts = np.bincount(ids, minlength=len(names))
        balance[split] = {name: int(c) for name, c in zip(names, counts, strict=True)}
    return balance


def char_lengths(tables: dict[str, pa.Table]) -> np.ndarray:
    """Characters of every text (all splits), computed in Arrow."""
    return np.concatenate([pc.utf8_length(tables[split]["text"]).to_numpy() for split in SPLITS])


def sample_rows(tables: dict[str, pa.Table], sample_size: int, seed: int) -> pa.Table:
    """A seeded sample of at most ``sample_size`` rows over all splits (for the costly statistics)."""
    combined = pa.concat_tables([tables[split] for split in SPLITS])
    if combined.num_rows > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(combined.num_rows, size=sample_size, replace=False))
        combined = combined.take(pa.array(rows))
    return combined


def sample_table(table: pa.Table, sample_size: int, seed: int) -> pa.Table:
    """A seeded sample of at most ``sample_size`` rows of one table."""
    if table.num_rows > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=sample_size, replace=False))
        table = table.take(pa.array(rows))
    return table


def long_document_stats(tokenizer: Any, train_tokens: np.ndarray, requested: int | str) -> dict[str, Any]:
    """``max_length`` (``auto`` resolved as training resolves it) and what each long-document choice keeps.

    Returns:
        ``max_length``, ``max_length_source`` (auto/given), ``special_tokens``, ``kept_fraction`` (mean share
        of a training document's tokens seen per choice), ``documents_whole`` (share that fits one window)
        and ``chunk_windows`` (windows per document at the default stride, a quarter of the window).
    """
    from transferkit.data.long_text import AUTO, auto_max_length, kept_fractions, special_token_count, window_starts

    specials = special_token_count(tokenizer)
    limit = getattr(tokenizer, "model_max_length", None)
    limit = int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else 512
    max_length = auto_max_length(train_tokens, limit) if requested == AUTO else int(requested)
    window = max(max_length - specials, 1)
    content = np.maximum(np.asarray(train_tokens, dtype=np.int64) - specials, 0)
    stride = window // 4
    windows = np.asarray([len(window_starts(int(n), window, stride)) for n in content], dtype=np.float64)
    return {
        "max_length": max_length,
        "max_length_source": "auto" if requested == AUTO else "given",
        "model_max_length": limit,
        "special_tokens": specials,
        "sample_size": len(content),
        "kept_fraction": {k: round(v, 6) for k, v in kept_fractions(content, window).items()},
        "documents_whole": round(float(np.mean(content <= window)), 6) if len(content) else 1.0,
        "chunk_windows": {"stride": stride, "mean": round(float(windows.mean()), 3) if len(windows) else 0.0,
                          "p95": float(np.percentile(windows, 95)) if len(windows) else 0.0,
                          "max": float(windows.max()) if len(windows) else 0.0},
    }


def word_lengths(sample: pa.Table) -> np.ndarray:
    """Whitespace-separated words per text of the sample (a regex count: too slow for every row)."""
    return np.asarray(pc.count_substring_regex(sample["text"], r"\S+").to_numpy())


def token_lengths(tokenizer: Any, sample: pa.Table) -> np.ndarray:
    """Token counts (with special tokens, no truncation) of the sampled rows."""
    from tqdm.auto import tqdm

    texts = sample["text"].to_pylist()
    pairs = sample["text_pair"].to_pylist() if "text_pair" in sample.column_names else None
    lengths: list[int] = []
    for start in tqdm(range(0, len(texts), TOKENIZE_CHUNK), desc="tokenizing sample", unit="chunk",
                      disable=None, leave=False):
        chunk_pairs = pairs[start : start + TOKENIZE_CHUNK] if pairs is not None else None
        encoded = tokenizer(texts[start : start + TOKENIZE_CHUNK], chunk_pairs, add_special_tokens=True,
                            truncation=False, return_attention_mask=False, return_token_type_ids=False,
                            verbose=False)
        lengths.extend(len(ids) for ids in encoded["input_ids"])
    return np.asarray(lengths, dtype=np.int64)


def suggest_max_length(p99: float, model_max_length: int | None) -> int:
    """Smallest multiple of 8 covering the 99th percentile, capped at the model's limit."""
    suggestion = max(8, math.ceil(p99 / 8.0) * 8)
    if model_max_length and 0 < model_max_length < 100_000:
        suggestion = min(suggestion, int(model_max_length))
    return suggestion


def imbalance_ratio(balance: dict[str, dict[str, int]]) -> float:
    """Largest over smallest class count across all splits."""
    totals = {}
    for split in SPLITS:
        for name, count in balance[split].items():
            totals[name] = totals.get(name, 0) + count
    smallest = min(totals.values())
    return round(max(totals.values()) / smallest, 3) if smallest else math.inf


def imbalance_warning(balance: dict[str, dict[str, int]], names: list[str], ratio: float, threshold: float,
                      unit: str) -> str | None:
    """The strong-imbalance warning (largest vs smallest class over all splits), or None below ``threshold``."""
    if ratio < threshold:
        return None
    largest = max(names, key=lambda n: sum(balance[s][n] for s in SPLITS))
    smallest = min(names, key=lambda n: sum(balance[s][n] for s in SPLITS))
    return (f"strong class imbalance: {largest!r} has {ratio:g}x the {unit} of {smallest!r} "
            f"(warning at {threshold:g}x); consider class weights or resampling")


def absent_class_warnings(balance: dict[str, dict[str, int]], names: list[str], unit: str) -> list[str]:
    """One warning per evaluation split that lacks some classes."""
    warnings = []
    for split in ("validation", "test"):
        absent = [n for n in names if balance[split][n] == 0]
        if absent:
            warnings.append(f"the {split} split has no {unit} of class(es) {', '.join(absent[:5])}"
                            + (" ..." if len(absent) > 5 else ""))
    return warnings


def split_summary(tables: dict[str, pa.Table], names: list[str], balance: dict[str, dict[str, int]], ratio: float,
                  leakage: Any, train_duplicates: int, source_rows: int) -> dict[str, Any]:
    """Row counts, labels, class balance and leakage removals: the statistics every task reports."""
    return {
        "source_rows": source_rows,
        "rows_used": sum(t.num_rows for t in tables.values()) + leakage.total,
        "rows": {split: tables[split].num_rows for split in SPLITS},
        "labels": names,
        "num_labels": len(names),
        "class_balance": balance,
        "imbalance_ratio": ratio,
        "duplicates_removed": {"validation": leakage.validation, "test": leakage.test, "total": leakage.total},
        "duplicates_within_train": train_duplicates,
    }


def class_balance_figure(balance: dict[str, dict[str, int]], names: list[str]) -> Any:
    """Grouped bar chart of rows per class in each split (the 40 largest classes when there are more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = names if len(names) <= 40 else sorted(names, key=lambda n: -balance["train"][n])[:40]
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.6 * len(shown))), 3.6))
    x = np.arange(len(shown))
    width = 0.27
    for offset, split in zip((-width, 0.0, width), SPLITS, strict=True):
        ax.bar(x + offset, [balance[split][n] for n in shown], width, label=split)
    ax.set_xticks(x, shown, rotation=45 if len(shown) > 6 else 0, ha="right" if len(shown) > 6 else "center")
    ax.set_ylabel("rows")
    ax.set_title("Class balance per split" + (" (40 largest classes)" if len(shown) < len(names) else ""))
    ax.legend()
    return fig


def _integer_bins(values: np.ndarray, most: int = 80) -> np.ndarray | int:
    """One bin per integer when the range is small (no aliasing gaps), else ``most`` bins."""
    low, high = int(values.min()), int(values.max())
    return np.arange(low, high + 2) - 0.5 if high - low < most else most


def _length_figure(tokens: np.ndarray, words: np.ndarray, max_length: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if len(tokens):
        left.hist(tokens, bins=_integer_bins(tokens), color="#4c72b0")
    left.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length={max_length}")
    left.set_xlabel("tokens per example")
    left.set_ylabel("examples")
    left.set_title(f"Token lengths (sample of {len(tokens)})")
    left.legend()
    right.hist(words, bins=_integer_bins(words), color="#55a868")
    right.set_xlabel("words per text")
    right.set_title(f"Word counts (sample of {len(words)})")
    return fig


def _number(value: float) -> int | str:
    return int(value) if float(value).is_integer() else f"{value:g}"


def labels_cell(stats: dict[str, Any]) -> str:
    """The report's "labels" cell: the count and the first 20 names."""
    return f"{stats['num_labels']}: " + ", ".join(stats["labels"][:20]) + (" ..." if stats["num_labels"] > 20 else "")


def add_class_balance(report: Any, stats: dict[str, Any], unit: str) -> None:
    """Add the class-balance section (per-split counts of the first 100 labels and the bar chart) to a report."""
    report.heading("Class balance")
    balance = stats["class_balance"]
    names = stats["labels"]
    report.table(["label", *SPLITS], [[n, *(balance[s][n] for s in SPLITS)] for n in names[:100]])
    report.figure("class_balance.png", class_balance_figure(balance, names), f"{unit} per class in each split")


def build_report(stats: dict[str, Any], tokens: np.ndarray, words: np.ndarray) -> Report:
    """The Markdown/HTML data report: summary, class balance chart, length histograms, warnings."""
    report = Report(f"Data preparation: {stats['source']}")
    rows = stats["rows"]
    report.heading("Summary")
    report.table(["item", "value"], [
        ["task", stats["task"]],
        ["source rows read", stats["source_rows"]],
        ["rows used", stats["rows_used"]],
        ["train / validation / test", f"{rows['train']} / {rows['validation']} / {rows['test']}"],
        ["split", stats["split"]["mode"] + (f" (seed {stats['split']['seed']})" if stats["split"].get("seed")
                                            is not None else "")],
        ["labels", labels_cell(stats)],
        ["duplicates removed from validation / test (leakage)",
         f"{stats['duplicates_removed']['validation']} / {stats['duplicates_removed']['test']}"],
        ["duplicate texts within train (kept)", stats["duplicates_within_train"]],
        ["class imbalance (largest / smallest)", f"{stats['imbalance_ratio']:g}"],
    ])
    add_class_balance(report, stats, "Rows")
    report.heading("Lengths")
    tok = stats["token_length"]
    report.paragraph(
        f"Tokenizer of {stats['model']} on a sample of {tok['sample_size']} examples: "
        f"{stats['truncation_rate'] * 100:.2f}% are longer than max_length={stats['max_length']} tokens and "
        f"would be truncated; suggested max_length {stats['suggested_max_length']}."
    )
    report.table(["measure", "min", "mean", "p50", "p95", "p99", "max"], [
        [label, *(_number(values[k]) for k in ("min", "mean", "p50", "p95", "p99", "max"))]
        for label, values in (("tokens", tok), ("words", stats["text_length_words"]),
                              ("characters", stats["text_length_chars"]))
    ])
    report.figure("lengths.png", _length_figure(tokens, words, stats["max_length"]),
                  "Histogram of token and word lengths")
    if "long_documents" in stats:
        add_long_documents(report, stats["long_documents"])
    if stats["warnings"]:
        report.heading("Warnings")
        for warning in stats["warnings"]:
            report.paragraph(warning, css_class="fail")
    return report


def add_long_documents(report: Any, info: dict[str, Any]) -> None:
    """The 'Long documents' section: what each choice of ``--truncation`` / ``--long-documents`` keeps."""
    source = ("auto: the 95th percentile of the training split's token lengths, rounded up to a multiple of 8, "
              f"capped at the model's {info['model_max_length']}") if info["max_length_source"] == "auto" else "given"
    kept, chunk = info["kept_fraction"], info["chunk_windows"]
    report.heading("Long documents")
    report.paragraph(
        f"max_length {info['max_length']} ({source}). On {info['sample_size']} training documents, "
        f"{info['documents_whole'] * 100:.1f}% fit in one window of {info['max_length'] - info['special_tokens']} "
        "text tokens. Share of each document's tokens the model sees, per choice:"
    )
    report.table(["choice", "tokens seen per document (mean)", "which tokens"], [
        ["--truncation head", f"{kept['head'] * 100:.1f}%", "the first ones"],
        ["--truncation tail", f"{kept['tail'] * 100:.1f}%", "the last ones"],
        ["--truncation head_tail", f"{kept['head_tail'] * 100:.1f}%", "the first quarter and last three quarters "
         "of the budget"],
        ["--long-documents chunk", f"{kept['chunk'] * 100:.1f}%",
         f"all, in {chunk['mean']:g} windows per document on average (p95 {chunk['p95']:g}, max "
         f"{chunk['max']:g}) at stride {chunk['stride']}"],
    ])
