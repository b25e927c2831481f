"""Data prep of the generative tasks: (instruction, source, target) pairs from CSV/TSV/JSONL/Parquet/S3/builtin.

Rows are streamed in Arrow batches restricted to the needed columns; empty sources or targets are named
errors with their file and row; the split is the user's split column (or the built-in's own) or a seeded
random split; validation/test rows whose (source, instruction) also occurs in an earlier split are removed
(:mod:`transferkit.data.splits`); token lengths of prompts and targets are measured with the configured
model's tokenizer (chat template applied) together with the truncation each would suffer at ``max_length``.
The result is the prepared-dataset contract (:mod:`transferkit.data.prepared`) with ``source``,
``instruction`` and ``target`` columns and an empty ``labels.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transferkit.data import splits as splitting
from transferkit.data import stats as statistics
from transferkit.data.prepared import FORMAT_VERSION, SPLITS
from transferkit.data.sources import SourceFile, iter_batches, open_source
from transferkit.data.validate import RowOrigin, as_strings
from transferkit.errors import DataError, SchemaError

logger = logging.getLogger(__name__)

TEXT_ROLES = ("source", "instruction", "target")
# Rows named in a message or warning.
SHOWN_ROWS = 5


def _read(files: list[SourceFile], needed: dict[str, str]) -> tuple[pa.Table, RowOrigin]:
    from tqdm.auto import tqdm

    origin = RowOrigin()
    columns: dict[str, list[pa.Array]] = {role: [] for role in needed}
    total = 0
    with tqdm(desc="reading", unit=" rows", unit_scale=True, disable=None, leave=False) as progress:
        for file in files:
            origin.add(file.display, total)
            in_file = 0
            for batch in iter_batches(file, needed):
                if batch.num_rows == 0:
                    continue
                offset = total + in_file

                def at(index: int, offset: int = offset) -> str:
                    return origin.locate(offset + index)

                for role, column in needed.items():
                    values = batch.column(column)
                    columns[role].append(as_strings(values, column, at, numbers="any" if role == "split" else
                                                    "reject"))
                in_file += batch.num_rows
                progress.update(batch.num_rows)
            total += in_file
    if total == 0:
        raise DataError(f"{files[0].display if len(files) == 1 else f'{len(files)} files'}: no data rows")
    return pa.table({role: pa.chunked_array(arrays, pa.string()) for role, arrays in columns.items()}), origin


def _check_filled(table: pa.Table, role: str, column: str, origin: RowOrigin, row_index: np.ndarray,
                  expected: str) -> None:
    values = table[role]
    empty = pc.or_(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(pc.fill_null(values, "")), ""))
    rows = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
    if len(rows):
        shown = "; ".join(origin.locate(int(row_index[i])) for i in rows[:SHOWN_ROWS])
        more = f" (and {len(rows) - SHOWN_ROWS} more)" if len(rows) > SHOWN_ROWS else ""
        raise DataError(f"{shown}{more}: column {column!r} is empty in {len(rows)} row(s); expected {expected}")


def _split(table: pa.Table, config: Any, origin: RowOrigin, row_index: np.ndarray) -> tuple[dict[str, np.ndarray],
                                                                                            dict[str, Any]]:
    if "split" in table.column_names:
        values = pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(table["split"], "")))
        known = pc.is_in(values, value_set=pa.array(SPLITS)).to_numpy(zero_copy_only=False)
        if not known.all():
            bad = int(np.flatnonzero(~known)[0])
            raise SchemaError(f"{origin.locate(int(row_index[bad]))}: column {config.split_column!r} holds "
                              f"{values[bad].as_py()!r}; expected train, validation or test")
        rng = np.random.default_rng(config.seed)
        out = {}
        for split in SPLITS:
            rows = np.flatnonzero(pc.equal(values, split).to_numpy(zero_copy_only=False))
            if len(rows) == 0:
                raise SchemaError(f"{config.dataset}: column {config.split_column!r} has no {split!r} rows; expected "
                                  "rows for train, validation and test")
            out[split] = rng.permutation(rows)
        return out, {"mode": f"column {config.split_column!r}", "seed": config.seed}
    n = table.num_rows
    n_test = math.ceil(config.test_fraction * n)
    n_val = math.ceil(config.validation_fraction / (1.0 - config.test_fraction) * (n - n_test))
    if n - n_test - n_val < 1:
        raise DataError(f"{config.dataset}: {n} rows cannot fill train, validation and test; provide more rows")
    order = np.random.default_rng(config.seed).permutation(n)
    return ({"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]},
            {"mode": "random", "seed": config.seed, "validation_fraction": config.validation_fraction,
             "test_fraction": config.test_fraction})


def _row_list(origin: RowOrigin, row_index: np.ndarray, rows: np.ndarray) -> str:
    shown = ", ".join(origin.locate(int(row_index[i])) for i in rows[:SHOWN_ROWS])
    return shown + (" ..." if len(rows) > SHOWN_ROWS else "")


def _token_stats(config: Any, model: Any, table: pa.Table, rows: Callable[[np.ndarray], str]
                 ) -> tuple[dict[str, Any], list[str]]:
    """Prompt/target token lengths of a seeded sample and the truncation each suffers at ``max_length``.

    Args:
        config: The data-prep configuration (``max_length``, ``token_sample_size``, ``seed``, ``model``).
        model: The resolved model whose tokenizer (and chat template) measures the lengths.
        table: Every pair (``source``, ``instruction``, ``target``), before splitting.
        rows: Names rows of ``table`` (file and row number) for the warnings.

    """
    from transferkit.data.prompts import fit, prompt_ids, target_ids
    from transferkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    seq2seq = bool(model.config.get("is_encoder_decoder"))
    index = np.arange(table.num_rows)
    if table.num_rows > config.token_sample_size:
        index = np.sort(np.random.default_rng(config.seed).choice(table.num_rows, config.token_sample_size,
                                                                   replace=False))
    sample = table.select(list(TEXT_ROLES)).take(pa.array(index))
    prompts, targets, cut_prompts, cut_targets = [], [], 0, 0
    for instruction, source, target in zip(sample["instruction"].to_pylist(), sample["source"].to_pylist(),
                                           sample["target"].to_pylist(), strict=True):
        p, t = prompt_ids(tokenizer, instruction, source, seq2seq=seq2seq), target_ids(tokenizer, target)
        fitted = fit(p, t, config.max_length, seq2seq=seq2seq)
        prompts.append(len(p))
        targets.append(len(t))
        cut_prompts += fitted.prompt_cut > 0
        cut_targets += fitted.target_cut > 0
    prompt_lengths, target_lengths = np.asarray(prompts), np.asarray(targets)
    # A decoder-only model reads prompt and target as one sequence; a seq2seq encoder reads the prompt alone.
    total = np.maximum(prompt_lengths, target_lengths) if seq2seq else prompt_lengths + target_lengths
    limit = getattr(tokenizer, "model_max_length", None)
    over_context = index[total > limit] if limit and limit < 1_000_000 else index[:0]
    n = max(len(total), 1)
    stats = {
        "tokenizer": str(config.model),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)) and not seq2seq,
        "seq2seq": seq2seq,
        "sample_size": len(total),
        "input_tokens": statistics.summarize(prompt_lengths),
        "target_tokens": statistics.summarize(target_lengths),
        "total_tokens": statistics.summarize(total),
        "input_truncation_rate": round(cut_prompts / n, 6),
        "target_truncation_rate": round(cut_targets / n, 6),
        "truncation_rate": round(float(np.mean(total > config.max_length)) if len(total) else 0.0, 6),
        "over_model_context": len(over_context),
    }
    warnings = []
    if stats["truncation_rate"] > 0.05:
        warnings.append(f"{stats['truncation_rate'] * 100:.1f}% of examples exceed max_length={config.max_length} "
                        f"tokens (prompt + target p99 = {stats['total_tokens']['p99']:g}); inputs cut in "
                        f"{stats['input_truncation_rate'] * 100:.1f}%, targets in "
                        f"{stats['target_truncation_rate'] * 100:.1f}%")
    if len(over_context):
        sampled = f" of {len(total)} sampled" if len(total) < table.num_rows else ""
        warnings.append(f"{len(over_context)}{sampled} pair(s) exceed the model's context of {limit} tokens and will "
                        f"be truncated ({rows(over_context)})")
    return stats, warnings


def prepare_pairs(config: Any, task: Any) -> Any:
    """Read, validate, split and profile pairs; write the prepared directory atomically.

    Args:
        config: The :class:`~transferkit.data.prepare.DataPrepConfig`.
        task: The generative task (its ``prep_columns`` and ``name``; ``check_target_longer`` for summaries).

    Returns:
        The :class:`~transferkit.data.prepare.DataPrepResult`.

    Raises:
        SchemaError: A missing column or a bad split value (naming the file and row).
        DataError: An empty source or target (naming the file and rows), too few rows.

    """
    from transferkit.data.builtin import builtin_path, get_builtin, is_builtin
    from transferkit.data.prepare import _check_out, split_metrics, write_prepared
    from transferkit.models.catalog import resolve_model

    started = time.perf_counter()
    needed = task.prep_columns(config)
    model = resolve_model(config.model)
    if is_builtin(config.dataset):
        entry = get_builtin(config.dataset)
        if entry.kind != "summarization":
            raise DataError(f"{config.dataset}: a {entry.kind} dataset ({entry.description}); expected pairs for "
                            f"--task {task.name}, e.g. builtin:aclsum")
        files = [SourceFile(builtin_path(config.dataset), config.dataset, "parquet")]
        _check_out(config.out, files)
        table, origin = _read(files, needed)
    else:
        with open_source(config.dataset) as files:
            _check_out(config.out, files)
            table, origin = _read(files, needed)
    if "instruction" not in table.column_names:
        table = table.append_column("instruction", pa.array([config.instruction or ""] * table.num_rows, pa.string()))
    source_rows = table.num_rows
    row_index = np.arange(source_rows)
    if config.max_rows is not None and source_rows > config.max_rows:
        row_index = np.sort(np.random.default_rng(config.seed).choice(source_rows, config.max_rows, replace=False))
        table = table.take(pa.array(row_index))
    _check_filled(table, "source", needed["source"], origin, row_index, task.source_expected)
    _check_filled(table, "target", needed["target"], origin, row_index, task.target_expected)
    def name_rows(rows: np.ndarray) -> str:
        return _row_list(origin, row_index, rows)

    warnings = task.pair_warnings(table, name_rows)
    tokens, token_warnings = _token_stats(config, model, table, name_rows)
    warnings += token_warnings
    indices, split_info = _split(table, config, origin, row_index)
    keyed = pa.table({"text": table["source"], "text_pair": pc.fill_null(table["instruction"], "")})
    keys = splitting.text_keys(keyed)
    indices, leakage = splitting.remove_leakage(indices, keys, keyed, config.dataset)
    train_duplicates = splitting.within_split_duplicates(indices["train"], keys)
    full = table.select(list(TEXT_ROLES))
    tables = {split: full.take(pa.array(indices[split])) for split in SPLITS}
    for warning in warnings:
        logger.warning("%s: %s", config.dataset, warning)
    rows = {split: tables[split].num_rows for split in SPLITS}
    stats = {
        "source": config.dataset, "task": task.name, "rows": rows, "source_rows": source_rows, "labels": [],
        "num_labels": 0, "imbalance_ratio": 1.0,
        "duplicates_removed": {"validation": leakage.validation, "test": leakage.test, "total": leakage.total},
        "train_duplicates": train_duplicates, "model": config.model, "max_length": config.max_length,
        "tokens": tokens, "split": split_info, "warnings": warnings,
    }
    report = _report(config, task, stats)
    schema = {"format_version": FORMAT_VERSION, "task": task.name, "source": config.dataset, "columns_from": needed,
              "instruction": config.instruction, "columns": {f.name: str(f.type) for f in full.schema},
              "num_labels": 0, "seed": config.seed, "max_rows": config.max_rows}
    metrics = {**split_metrics(stats), "input_tokens_p95": float(tokens["input_tokens"]["p95"]),
               "target_tokens_p95": float(tokens["target_tokens"]["p95"]),
               "truncation_rate": float(tokens["truncation_rate"])}
    token_length = {"sample_size": tokens["sample_size"], **tokens["total_tokens"]}
    return write_prepared(config, tables, [], schema, stats, report, started, source_rows, leakage.total,
                          unit="pairs", metrics=metrics, token_length=token_length,
                          truncation_rate=tokens["truncation_rate"])


def _report(config: Any, task: Any, stats: dict[str, Any]) -> Any:
    from transferkit.reporting import Report

    tokens = stats["tokens"]
    report = Report(f"Data prep ({task.name}): {config.dataset}")
    report.table(["split", "pairs"], [[split, n] for split, n in stats["rows"].items()])
    report.paragraph(f"Split: {stats['split']['mode']}. Removed {stats['duplicates_removed']['total']} evaluation "
                     "pair(s) whose input also occurs in an earlier split.")
    report.heading("Token lengths")
    template = "applied" if tokens["chat_template"] else "absent: plain prompt"
    report.paragraph(f"Tokenizer of {tokens['tokenizer']} (chat template {template}), {tokens['sample_size']} "
                     f"sampled pairs, max_length {config.max_length}.")
    report.table(["", "p50", "p95", "p99", "max"],
                 [[name, *(tokens[key][q] for q in ("p50", "p95", "p99", "max"))]
                  for name, key in (("input (prompt)", "input_tokens"), ("target", "target_tokens"),
                                    ("input + target", "total_tokens"))])
    report.table(["truncated at max_length", "share"],
                 [["any part", f"{tokens['truncation_rate'] * 100:.2f}%"],
                  ["input", f"{tokens['input_truncation_rate'] * 100:.2f}%"],
                  ["target", f"{tokens['target_truncation_rate'] * 100:.2f}%"]])
    if stats["warnings"]:
        report.heading("Warnings")
        for warning in stats["warnings"]:
            report.paragraph(warning)
    return report
