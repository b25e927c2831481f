"""The data-prep step: read a labelled dataset, validate it, split it, profile it, write it atomically.

``prepare_dataset(DataPrepConfig(...))`` writes the prepared-dataset contract of
:mod:`transferkit.data.prepared` plus ``report.md``/``report.html``. Sources are streamed in Arrow
batches restricted to the needed columns; rows are never materialised as Python objects except the
bounded sample used for token statistics. The configured task (:mod:`transferkit.tasks`) runs its own data
prep with the same configuration, result and writer: text classification is :func:`prepare_texts` here, image
classification :mod:`transferkit.data.image_prep`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transferkit.data import splits as splitting
from transferkit.data import stats as statistics
from transferkit.data.long_text import AUTO, parse_max_length
from transferkit.data.prepared import FORMAT_VERSION, SPLITS
from transferkit.data.sources import SourceFile, iter_batches, open_source, source_size
from transferkit.data.validate import (
    RowOrigin,
    check_classes,
    check_stratifiable,
    encode_labels,
    normalize_batch,
    sorted_label_names,
)
from transferkit.errors import ConfigError, DataError
from transferkit.io import atomic_output_dir, check_creatable, check_replaceable, write_json
from transferkit.tasks import DEFAULT_TASK, find_task, get_task, task_names

logger = logging.getLogger(__name__)

# A previous data-prep output always holds these: --out is replaced only when it does (or is empty).
OWNED_FILES = ("schema.json", "stats.json")
# Options of the generative tasks (summarization, instruction); the classification tasks reject them.
# max_length of data prep for tasks without an automatic length (Task.auto_max_length False).
AUTO_FALLBACK_MAX_LENGTH = 64
GENERATIVE_PREP_FIELDS = ("source_column", "target_column", "prompt_column", "response_column",
                          "instruction_column", "instruction")


@dataclass
class DataPrepConfig:
    """Configuration of the data-prep step (validated on construction).

    Attributes:
        dataset: ``/path/file.csv``, a directory of files of one format, ``s3://bucket/key`` (or a
            ``prefix/``), or ``builtin:NAME``.
        out: Output directory (replaced atomically).
        task: A registered task (:func:`transferkit.tasks.task_names`): ``text-classification``,
            ``image-classification``, ``summarization`` or ``instruction``.
        text_column: Column with the text (text only; ignored for images).
        text_pair_column: Optional second text (sentence-pair classification).
        label_column: Column with class names or integer class ids (image tables too; image folders take
            the class from the sub-folder name).
        image_column: Column with image paths (relative to the table file) or image bytes (images only).
        group_column: Optional slice column kept as ``group`` for slice metrics.
        split_column: Optional column with ``train``/``validation``/``test`` per row; replaces the
            stratified split.
        validation_fraction: Share of rows for validation (stratified split).
        test_fraction: Share of rows for test (stratified split).
        seed: Seed for sampling, splitting, shuffling and the token-statistics sample.
        model: Model whose tokenizer measures token lengths (catalog name or model directory; text only).
        max_length: Sequence length at which the truncation rate and the tokens kept per choice are measured,
            or ``auto`` (text classification: the 95th percentile of the training split's token lengths,
            rounded up to a multiple of 8, capped by the model's limit, as training resolves it; tasks
            without an automatic length take 64). 0 (the KFP component's unset value) means auto.
        max_rows: Use a seeded random sample of this many rows (quick runs); None or 0 = all rows.
        imbalance_warning_ratio: Warn when largest/smallest class count reaches this ratio.
        min_class_count: Smallest class size accepted for a stratified split.
        token_sample_size: Rows tokenized for token statistics (bounded for large data).
        min_image_size: Smallest accepted width and height in pixels (images only).
        source_column: Column with the document to summarize (summarization; default ``source``).
        target_column: Column with the reference summary (summarization; default ``target``).
        prompt_column: Column with the prompt (instruction tuning; default ``prompt``).
        response_column: Column with the reference response (instruction tuning; default ``response``).
        instruction_column: Optional column with a per-row instruction put before the input (generative tasks).
        instruction: Optional fixed instruction put before every input (generative tasks; not with
            ``instruction_column``).

    """

    dataset: str
    out: str | Path
    task: str = DEFAULT_TASK
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    group_column: str | None = None
    split_column: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    model: str = "minilm-l6"
    max_length: int | str = "auto"
    max_rows: int | None = None
    imbalance_warning_ratio: float = 10.0
    min_class_count: int = 10
    token_sample_size: int = 20_000
    image_column: str = "image"
    min_image_size: int = 8
    source_column: str | None = None
    target_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    instruction_column: str | None = None
    instruction: str | None = None

    def __post_init__(self) -> None:
        self.dataset = str(self.dataset).strip()
        if not self.dataset:
            raise ConfigError("dataset: expected a path, s3://bucket/key or builtin:NAME, got an empty string")
        if not str(self.out).strip():
            raise ConfigError("out: expected an output directory, got an empty string")
        self.out = Path(self.out)
        task = find_task(self.task)
        if task is None:
            raise ConfigError(f"task: unknown task {self.task!r}; supported: {', '.join(task_names())}")
        # KFP passes unset optional string parameters as "": treat them as absent.
        for name in ("text_pair_column", "group_column", "split_column", *GENERATIVE_PREP_FIELDS):
            value = getattr(self, name)
            setattr(self, name, (value.strip() or None) if isinstance(value, str) else value)
        task.check_prep_config(self)
        if not isinstance(self.min_image_size, int) or self.min_image_size < 1:
            raise ConfigError(f"min_image_size: expected a positive number of pixels, got {self.min_image_size!r}")
        for name in ("text_column", "label_column", "image_column"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{name}: expected a column name, got an empty string")
        roles = self.columns()
        seen: dict[str, str] = {}
        for role, column in roles.items():
            if column in seen:
                raise ConfigError(f"{role}_column and {seen[column]}_column are both {column!r}; expected "
                                  "different columns")
            seen[column] = role
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
                raise ConfigError(f"{name}: expected a fraction between 0 and 1 (exclusive), got {value!r}")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"validation_fraction + test_fraction = {self.validation_fraction + self.test_fraction:g}; "
                "expected less than 0.9 so that train keeps at least 10% of the rows"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: expected a non-negative integer, got {self.seed!r}")
        if not str(self.model).strip():
            raise ConfigError("model: expected a catalog name or model directory for token statistics")
        if self.max_length == 0 and not isinstance(self.max_length, bool):
            self.max_length = AUTO
        parsed = parse_max_length(self.max_length)
        if parsed is None:
            raise ConfigError(f"max_length: expected a positive integer or 'auto', got {self.max_length!r}")
        self.max_length = parsed if parsed != AUTO or task.auto_max_length else AUTO_FALLBACK_MAX_LENGTH
        if self.max_rows == 0:
            self.max_rows = None
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise ConfigError(f"max_rows: expected a positive integer or none (all rows), got {self.max_rows!r}")
        if not self.imbalance_warning_ratio > 1.0:
            raise ConfigError(f"imbalance_warning_ratio: expected a ratio above 1, got {self.imbalance_warning_ratio}")
        if not isinstance(self.min_class_count, int) or self.min_class_count < 3:
            raise ConfigError(f"min_class_count: expected an integer of at least 3 (a 3-way stratified split), "
                              f"got {self.min_class_count!r}")
        if not isinstance(self.token_sample_size, int) or self.token_sample_size < 1:
            raise ConfigError(f"token_sample_size: expected a positive integer, got {self.token_sample_size!r}")

    def columns(self) -> dict[str, str]:
        """Role -> source column, for the roles the task reads (``image`` and ``label`` for images)."""
        return get_task(self.task).prep_columns(self)


@dataclass
class DataPrepResult:
    """What the data-prep step wrote and measured (paths point into the final output directory)."""

    out_dir: Path
    split_paths: dict[str, Path]
    labels_path: Path
    schema_path: Path
    stats_path: Path
    report_md: Path
    report_html: Path
    rows: dict[str, int]
    labels: list[str]
    num_labels: int
    source_rows: int
    duplicates_removed: int
    token_length: dict[str, float] = field(default_factory=dict)  # text only
    truncation_rate: float = 0.0  # text only
    long_documents: dict[str, Any] = field(default_factory=dict)  # text only: statistics.long_document_stats
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    task: str = DEFAULT_TASK
    image_size: dict[str, dict[str, float]] = field(default_factory=dict)  # images only: width/height summaries
    modes: dict[str, int] = field(default_factory=dict)  # images only: images per stored mode

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (paths as strings)."""
        data = asdict(self)
        for key, value in list(data.items()):
            if isinstance(value, Path):
                data[key] = str(value)
        data["split_paths"] = {k: str(v) for k, v in self.split_paths.items()}
        return data


def _check_out(out: Path, files: list[SourceFile]) -> None:
    final = out.resolve()
    for file in files:
        path = file.path.resolve()
        if path == final or final in path.parents:
            raise ConfigError(f"out: {out} contains the input {file.display}; replacing it would delete the "
                              "input, choose another output directory")
    check_creatable(out)
    check_replaceable(out, OWNED_FILES)


def read_rows(files: list[SourceFile], needed: dict[str, str], dataset: str
              ) -> tuple[pa.Table, RowOrigin, np.ndarray]:
    """Stream and validate every file into one Arrow table of role columns (strings).

    Returns:
        The table, the map from rows back to files, and the duplicate-detection key of every row.

    Raises:
        DataError: No data rows, or any validation error from :mod:`transferkit.data.validate`.

    """
    from tqdm.auto import tqdm

    origin = RowOrigin()
    batches: list[pa.RecordBatch] = []
    keys: list[np.ndarray] = []
    total = 0
    with tqdm(desc="reading", unit=" rows", unit_scale=True, disable=None, leave=False) as progress:
        for file in files:
            origin.add(file.display, total)
            in_file = 0
            for batch in iter_batches(file, needed):
                if batch.num_rows == 0:
                    continue
                batches.append(normalize_batch(batch, needed, file, in_file))
                keys.append(splitting.text_keys(batches[-1]))
                in_file += batch.num_rows
                progress.update(batch.num_rows)
            total += in_file
    if total == 0:
        where = files[0].display if len(files) == 1 else f"{dataset} ({len(files)} files)"
        raise DataError(f"{where}: no data rows; expected a header row followed by data rows"
                        if files[0].format in {"csv", "tsv"} else f"{where}: no data rows")
    return pa.Table.from_batches(batches), origin, np.concatenate(keys)


def _split_tables(table: pa.Table, ids: np.ndarray, names: list[str], indices: dict[str, np.ndarray]
                  ) -> dict[str, pa.Table]:
    columns: dict[str, pa.Array | pa.ChunkedArray] = {"text": table["text"]}
    if "text_pair" in table.column_names:
        columns["text_pair"] = table["text_pair"]
    columns["label"] = pa.array(ids, pa.int64())
    columns["label_name"] = pa.array(names, pa.string()).take(pa.array(ids))
    if "group" in table.column_names:
        columns["group"] = table["group"]
    full = pa.table(columns)
    return {split: full.take(pa.array(indices[split])) for split in SPLITS}


def prepare_dataset(config: DataPrepConfig) -> DataPrepResult:
    """Validate, split and profile a dataset for the configured task; write the prepared directory atomically.

    Args:
        config: The step configuration.

    Returns:
        Paths of everything written and the numbers a pipeline component reports.

    Raises:
        ConfigError: Invalid configuration.
        DatasetNotFoundError: The dataset does not exist.
        SchemaError: Missing columns, wrong types, a single class, unseen evaluation labels.
        DataError: Empty/malformed/non-UTF-8 files, empty texts, missing labels, classes too small.
        ModelError: The tokenizer model cannot be resolved.

    Images: unreadable or too small images, empty class folders and too-small classes raise
    ``DataError`` naming the file or row (see :func:`transferkit.data.image_prep.prepare_images`).

    """
    return get_task(config.task).prepare(config)


def prepare_texts(config: DataPrepConfig) -> DataPrepResult:
    """Text classification's data prep (see :func:`prepare_dataset`)."""
    from transferkit.models.catalog import resolve_model

    started = time.perf_counter()
    needed = config.columns()
    model = resolve_model(config.model)  # fail before reading gigabytes when the model name is wrong
    with open_source(config.dataset) as files:
        _check_out(config.out, files)
        logger.info("Reading %s: %d file(s), %.1f MB", config.dataset, len(files), source_size(files) / 1e6)
        table, origin, keys = read_rows(files, needed, config.dataset)
    source_rows = table.num_rows
    row_index = np.arange(source_rows)
    if config.max_rows is not None and source_rows > config.max_rows:
        rng = np.random.default_rng(config.seed)
        row_index = np.sort(rng.choice(source_rows, size=config.max_rows, replace=False))
        table = table.take(pa.array(row_index))
        keys = keys[row_index]
        logger.info("Using a seeded sample of %d of %d rows (max_rows)", config.max_rows, source_rows)

    names = sorted_label_names(table["label"])
    ids = encode_labels(table["label"], names)
    counts = np.bincount(ids, minlength=len(names))
    check_classes(config.dataset, config.label_column, names, counts)
    if config.split_column:
        indices = splitting.column_split(table["split"], ids, names, config.seed, origin, config.split_column,
                                         row_index, config.dataset)
        split_info: dict[str, Any] = {"mode": f"column {config.split_column!r}", "seed": config.seed}
    else:
        check_stratifiable(config.dataset, config.label_column, names, counts, config.min_class_count)
        indices = splitting.stratified_split(ids, len(names), config.validation_fraction, config.test_fraction,
                                             config.seed, config.dataset)
        split_info = {"mode": "stratified", "seed": config.seed, "validation_fraction": config.validation_fraction,
                      "test_fraction": config.test_fraction}
    indices, leakage = splitting.remove_leakage(indices, keys, table, config.dataset)
    train_duplicates = splitting.within_split_duplicates(indices["train"], keys)
    tables = _split_tables(table, ids, names, indices)
    del table
    if leakage.total:
        logger.info("Leakage check: removed %d validation and %d test rows whose text occurs in an earlier split",
                    leakage.validation, leakage.test)

    stats, tokens, words = _statistics(config, model, tables, names, leakage, train_duplicates, source_rows,
                                       split_info)
    report = statistics.build_report(stats, tokens, words)
    schema = _schema(config, names, tables, len(files))
    return write_prepared(config, tables, names, schema, stats, report, started, source_rows, leakage.total,
                          unit="rows", metrics=_metrics(stats), token_length=dict(stats["token_length"]),
                          truncation_rate=stats["truncation_rate"], long_documents=dict(stats["long_documents"]))


def write_prepared(config: DataPrepConfig, tables: dict[str, pa.Table], names: list[str], schema: dict[str, Any],
                   stats: dict[str, Any], report: Any, started: float, source_rows: int, duplicates_removed: int,
                   *, unit: str, metrics: dict[str, float], **task_fields: Any) -> DataPrepResult:
    """Write the splits, labels, schema, statistics and report atomically; return the step's result.

    Shared by text and image data prep; ``metrics`` are the task's KFP metrics and ``task_fields`` its own
    :class:`DataPrepResult` fields.

    Raises:
        ConfigError: ``out`` cannot be written.

    """
    try:
        with atomic_output_dir(config.out, owned_files=OWNED_FILES) as tmp:
            for split in SPLITS:
                pq.write_table(tables[split], tmp / f"{split}.parquet")
            write_json(tmp / "labels.json", names)
            write_json(tmp / "schema.json", schema)
            write_json(tmp / "stats.json", stats)
            md_path, html_path = report.write(tmp, stem="report")
    except OSError as exc:
        raise ConfigError(f"out: cannot write {config.out} ({exc.strerror or type(exc).__name__})") from None
    out = Path(config.out).absolute()
    elapsed = time.perf_counter() - started
    logger.info("Prepared %s -> %s in %.1f s (%d/%d/%d %s)", config.dataset, out, elapsed, *stats["rows"].values(),
                unit)
    return DataPrepResult(
        out_dir=out,
        split_paths={split: out / f"{split}.parquet" for split in SPLITS},
        labels_path=out / "labels.json",
        schema_path=out / "schema.json",
        stats_path=out / "stats.json",
        report_md=out / md_path.name,
        report_html=out / html_path.name,
        rows=dict(stats["rows"]),
        labels=names,
        num_labels=len(names),
        source_rows=source_rows,
        duplicates_removed=duplicates_removed,
        warnings=list(stats["warnings"]),
        metrics=metrics,
        task=config.task,
        **task_fields,
    )


def _statistics(config: DataPrepConfig, model: Any, tables: dict[str, pa.Table], names: list[str],
                leakage: splitting.LeakageReport, train_duplicates: int, source_rows: int,
                split_info: dict[str, Any]
                ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from transferkit.models.loading import load_tokenizer

    balance = statistics.class_balance(tables, names)
    chars = statistics.char_lengths(tables)
    sample = statistics.sample_rows(tables, config.token_sample_size, config.seed)
    words = statistics.word_lengths(sample)
    tokenizer = load_tokenizer(model)
    tokens = statistics.token_lengths(tokenizer, sample)
    token_summary = {"sample_size": len(tokens), **statistics.summarize(tokens)}
    train_tokens = statistics.token_lengths(tokenizer, statistics.sample_table(tables["train"],
                                                                               config.token_sample_size, config.seed))
    long_documents = statistics.long_document_stats(tokenizer, train_tokens, config.max_length)
    max_length = long_documents["max_length"]
    truncation = round(float(np.mean(tokens > max_length)), 6) if len(tokens) else 0.0
    ratio = statistics.imbalance_ratio(balance)
    warning = statistics.imbalance_warning(balance, names, ratio, config.imbalance_warning_ratio, "rows")
    warnings = [warning] if warning else []
    if truncation > 0.05:
        warnings.append(f"{truncation * 100:.1f}% of examples exceed max_length={max_length} tokens and "
                        f"will be truncated (p99 = {token_summary['p99']:g} tokens); --long-documents chunk "
                        "reads them whole (see the data report's 'Long documents')")
    warnings += statistics.absent_class_warnings(balance, names, "rows")
    for warning in warnings:
        logger.warning("%s: %s", config.dataset, warning)
    stats = {
        "source": config.dataset,
        "task": config.task,
        **statistics.split_summary(tables, names, balance, ratio, leakage, train_duplicates, source_rows),
        "text_length_chars": statistics.summarize(chars),
        "text_length_words": {"sample_size": len(words), **statistics.summarize(words)},
        "model": config.model,
        "max_length": max_length,
        "long_documents": long_documents,
        "token_length": token_summary,
        "truncation_rate": truncation,
        "suggested_max_length": statistics.suggest_max_length(token_summary["p99"],
                                                              getattr(tokenizer, "model_max_length", None)),
        "split": split_info,
        "warnings": warnings,
    }
    return stats, tokens, words


def _schema(config: DataPrepConfig, names: list[str], tables: dict[str, pa.Table], files: int) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "task": config.task,
        "source": config.dataset,
        "source_files": files,
        "text_column": config.text_column,
        "text_pair_column": config.text_pair_column,
        "label_column": config.label_column,
        "group_column": config.group_column,
        "split_column": config.split_column,
        "columns": {field.name: str(field.type) for field in tables["train"].schema},
        "num_labels": len(names),
        "seed": config.seed,
        "max_rows": config.max_rows,
    }


def split_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """Row counts, label count, leakage removals and imbalance: the metrics every task reports."""
    return {
        "rows_train": float(stats["rows"]["train"]),
        "rows_validation": float(stats["rows"]["validation"]),
        "rows_test": float(stats["rows"]["test"]),
        "source_rows": float(stats["source_rows"]),
        "num_labels": float(stats["num_labels"]),
        "duplicates_removed": float(stats["duplicates_removed"]["total"]),
        "imbalance_ratio": float(stats["imbalance_ratio"]),
    }


def _metrics(stats: dict[str, Any]) -> dict[str, float]:
    tokens = stats["token_length"]
    return {
        **split_metrics(stats),
        "token_length_p50": float(tokens["p50"]),
        "token_length_p95": float(tokens["p95"]),
        "token_length_p99": float(tokens["p99"]),
        "token_length_max": float(tokens["max"]),
        "truncation_rate": float(stats["truncation_rate"]),
        "max_length": float(stats["max_length"]),
        "tokens_kept_head": float(stats["long_documents"]["kept_fraction"]["head"]),
    }
