"""A corpus of bad inputs: each must fail with its own one-line message, a non-zero CLI exit and no output."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    ModelError,
    SchemaError,
    TransferkitError,
)

runner = CliRunner()


def _rows(n: int, labels: tuple[str, ...] = ("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"sentence number {i} about things", labels[i % len(labels)]) for i in range(n)]


def _csv(path: Path, rows: list[tuple[Any, ...]], header: str = "text,label", encoding: str = "utf-8") -> str:
    lines = [header, *(",".join(str(v) for v in row) for row in rows)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return str(path)


def _write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@dataclass
class Case:
    """One bad input: how to write it, which error it raises and what the message must say."""

    name: str
    make: Callable[[Path], str]
    error: type[TransferkitError]
    message: str  # regular expression searched in the one-line message
    config: dict[str, Any] = field(default_factory=dict)
    cli: list[str] = field(default_factory=list)


def _latin1_late(tmp: Path) -> str:
    # The bad byte sits beyond the encoding sniff window: found by the per-batch UTF-8 cast instead.
    rows = [(f"an ordinary ascii sentence, padded to be long enough {i}", "neg" if i % 2 else "pos")
            for i in range(1500)]
    data = ("text,label\n" + "".join(f'"{t}",{lbl}\n' for t, lbl in rows)).encode() + b"caf\xe9 au lait,neg\n"
    (tmp / "late.csv").write_bytes(data)
    return str(tmp / "late.csv")


def _mixed_dir(tmp: Path) -> str:
    folder = tmp / "mixed"
    folder.mkdir()
    _csv(folder / "a.csv", _rows(20))
    _jsonl(folder / "b.jsonl", [{"text": "x", "label": "neg"}])
    return str(folder)


def _empty_dir(tmp: Path) -> str:
    (tmp / "nothing").mkdir()
    (tmp / "nothing" / "README.md").write_text("no data here")
    return str(tmp / "nothing")


def _parquet(tmp: Path, table: pa.Table, name: str = "data.parquet") -> str:
    pq.write_table(table, tmp / name)
    return str(tmp / name)


def _split_rows(tmp: Path) -> str:
    rows = [(f"text {i}", "a" if i % 2 else "b", "train") for i in range(40)]
    rows += [(f"text v{i}", "a", "validation") for i in range(5)]
    rows += [(f"text t{i}", "a" if i else "c", "test") for i in range(5)]
    return _csv(tmp / "split.csv", rows, header="text,label,split")


def _inside_out(tmp: Path) -> str:
    (tmp / "out").mkdir()
    return _csv(tmp / "out" / "data.csv", _rows(40))


CASES = [
    Case("file-not-found", lambda t: str(t / "missing.csv"), DatasetNotFoundError,
         r"missing\.csv: file or directory not found"),
    Case("unknown-extension", lambda t: _csv(t / "data.xlsx", _rows(30)), DataError,
         r"data\.xlsx: unknown format \.xlsx; expected one of \.csv, \.tsv"),
    Case("json-array", lambda t: _write(t / "data.json", "[]"), DataError,
         r"data\.json: unknown format \.json; .*JSON arrays are not supported"),
    Case("empty-file", lambda t: _write(t / "empty.csv", b""), DataError,
         r"empty\.csv: empty file; expected a header row and data rows"),
    Case("header-only", lambda t: _csv(t / "header.csv", []), DataError,
         r"header\.csv: no data rows"),
    Case("missing-label-column", lambda t: _csv(t / "nolabel.csv", [(1, "hello")], header="id,text"), SchemaError,
         r"nolabel\.csv: missing column\(s\) 'label'; columns present: id, text"),
    Case("missing-text-column", lambda t: _csv(t / "d.csv", _rows(30)), SchemaError,
         r"d\.csv: missing column\(s\) 'review'; columns present: text, label",
         config={"text_column": "review"}, cli=["--text-column", "review"]),
    Case("missing-pair-column", lambda t: _csv(t / "d.csv", _rows(30)), SchemaError,
         r"missing column\(s\) 'hypothesis'; columns present: text, label",
         config={"text_pair_column": "hypothesis"}, cli=["--text-pair-column", "hypothesis"]),
    Case("empty-text", lambda t: _csv(t / "d.csv", [("fine", "pos"), ("", "neg"), ("ok", "pos")]), DataError,
         r"d\.csv: row 2: empty text in column 'text'; expected a non-empty string"),
    Case("whitespace-text", lambda t: _csv(t / "d.csv", [("fine", "pos"), ("ok", "neg"), ('"   "', "pos")]),
         DataError, r"d\.csv: row 3: empty text in column 'text'"),
    Case("null-text-jsonl", lambda t: _jsonl(t / "d.jsonl", [{"text": "a", "label": 1}, {"text": None, "label": 0}]),
         DataError, r"d\.jsonl: row 2: missing text in column 'text'"),
    Case("numeric-text-jsonl", lambda t: _jsonl(t / "d.jsonl", [{"text": 5, "label": "a"}, {"text": 6, "label": "b"}]),
         SchemaError, r"d\.jsonl: row 1: column 'text' holds int64 value 5; expected strings"),
    Case("mixed-type-text-jsonl",
         lambda t: _jsonl(t / "d.jsonl", [{"text": "a", "label": "x"}, {"text": 7, "label": "y"}]),
         SchemaError, r"d\.jsonl: line 2: column 'text' holds int 7 but earlier rows hold str"),
    Case("invalid-json-line", lambda t: _write(t / "d.jsonl", '{"text": "a", "label": 1}\n{"text": \n'),
         DataError, r"d\.jsonl: line 2: invalid JSON"),
    Case("missing-label-value", lambda t: _csv(t / "d.csv", [("one", "pos"), ("two", ""), ("three", "neg")]),
         DataError, r"d\.csv: row 2: missing label in column 'label'"),
    Case("null-label-jsonl", lambda t: _jsonl(t / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}]),
         DataError, r"d\.jsonl: row 2: missing label in column 'label'"),
    Case("fractional-label",
         lambda t: _jsonl(t / "d.jsonl", [{"text": "a", "label": 1.0}, {"text": "b", "label": 0.5}]),
         SchemaError, r"d\.jsonl: row 2: column 'label' holds the non-integer number 0\.5"),
    Case("single-class", lambda t: _csv(t / "d.csv", _rows(50, ("pos",))), SchemaError,
         r"d\.csv: column 'label' has a single class 'pos' in 50 rows; expected at least 2 classes"),
    Case("class-too-small", lambda t: _csv(t / "d.csv", [*_rows(60), ("rare one", "rare"), ("rare two", "rare")]),
         DataError, r"class\(es\) 'rare' \(2\) in column 'label' have fewer than min_class_count=10 rows"),
    Case("unseen-label-in-test", _split_rows, SchemaError,
         r"split\.csv: row 46: label\(s\) 'c' occur in the test split but not in train",
         config={"split_column": "split"}, cli=["--split-column", "split"]),
    Case("bad-split-value", lambda t: _csv(t / "d.csv", [("a", "x", "train"), ("b", "y", "dev")],
                                          header="text,label,split"),
         SchemaError, r"d\.csv: row 2: column 'split' holds 'dev'; expected train, validation or test",
         config={"split_column": "split"}, cli=["--split-column", "split"]),
    Case("latin1-encoding", lambda t: _csv(t / "d.csv", [("ok", "pos"), ("café", "neg")], encoding="latin-1"),
         DataError, r"d\.csv: line 3: byte 0xe9 is not valid UTF-8; expected UTF-8 text"),
    Case("latin1-after-sniff-window", _latin1_late, DataError,
         r"late\.csv: row 1501: column 'text' is not valid UTF-8 \(byte 0xe9\)"),
    Case("utf16-encoding", lambda t: _csv(t / "d.csv", _rows(30), encoding="utf-16"), DataError,
         r"d\.csv: text is encoded as UTF-16; expected UTF-8"),
    Case("malformed-csv-row", lambda t: _csv(t / "d.csv", [("a", "pos"), ("b", "neg", "extra")]), DataError,
         r"d\.csv: row 2: expected 2 fields, found 3"),
    Case("fractions-sum", lambda t: _csv(t / "d.csv", _rows(50)), ConfigError,
         r"validation_fraction \+ test_fraction = 0\.9; expected less than 0\.9",
         config={"validation_fraction": 0.5, "test_fraction": 0.4},
         cli=["--validation-fraction", "0.5", "--test-fraction", "0.4"]),
    Case("fraction-range", lambda t: _csv(t / "d.csv", _rows(50)), ConfigError,
         r"test_fraction: expected a fraction between 0 and 1 \(exclusive\), got 0\.0",
         config={"test_fraction": 0.0}, cli=["--test-fraction", "0"]),
    Case("unknown-task", lambda t: _csv(t / "d.csv", _rows(50)), ConfigError,
         r"task: unknown task 'regression'; supported: text-classification, image-classification, summarization, "
         r"instruction", config={"task": "regression"}, cli=["--task", "regression"]),
    Case("image-builtin-for-text", lambda t: "builtin:digits", DataError,
         r"builtin:digits: an image dataset .*; expected task image-classification"),
    Case("same-column-twice", lambda t: _csv(t / "d.csv", _rows(50)), ConfigError,
         r"label_column and text_column are both 'text'",
         config={"label_column": "text"}, cli=["--label-column", "text"]),
    Case("lee-similarity-builtin", lambda t: "builtin:lee-similarity", DataError,
         r"builtin:lee-similarity: a similarity-pairs dataset .*forgetting check"),
    Case("unknown-builtin", lambda t: "builtin:imdb", DatasetNotFoundError,
         r"builtin:imdb: unknown built-in dataset; known: builtin:aclsum, builtin:digits, builtin:fashion-mnist, "
         r"builtin:lee-similarity, builtin:mnist-5k, builtin:movie-sentiment"),
    Case("mixed-format-directory", _mixed_dir, DataError, r"mixed: directory mixes formats \(csv, jsonl\)"),
    Case("directory-without-data", _empty_dir, DataError,
         r"nothing: directory holds no data files \(found only: README\.md\)"),
    Case("corrupt-parquet", lambda t: _write(t / "d.parquet", b"PAR1 not really"),
         DataError, r"d\.parquet: not a readable Parquet file"),
    Case("numeric-text-parquet", lambda t: _parquet(t, pa.table({"text": [1, 2], "label": ["a", "b"]})),
         SchemaError, r"data\.parquet: row 1: column 'text' holds int64 value 1; expected strings"),
    Case("unsupported-scheme", lambda t: "https://example.com/data.csv", DataError,
         r"https://example\.com/data\.csv: unsupported URI scheme"),
    Case("gzip-latin1", lambda t: _write(t / "d.csv.gz", gzip.compress(b"text,label\nna\xefve,pos\n")),
         DataError, r"d\.csv\.gz: line 2: byte 0xef is not valid UTF-8"),
    Case("out-contains-input", _inside_out, ConfigError, r"out: .* contains the input .*data\.csv"),
    Case("unknown-model", lambda t: _csv(t / "d.csv", _rows(50)), ModelError,
         r"model 'no-such-model': not a catalog name", config={"model": "no-such-model"},
         cli=["--model", "no-such-model"]),
]


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.lower().lstrip(".").startswith("out"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_raises_specific_one_line_error_and_writes_nothing(case: Case, tmp_path: Path) -> None:
    dataset = case.make(tmp_path)
    out = tmp_path / "out"
    expect_out = out.exists()  # only the out-contains-input case creates it beforehand, as the input folder
    with pytest.raises(case.error, match=case.message) as info:
        prepare_dataset(DataPrepConfig(dataset=dataset, out=out, **case.config))
    assert "\n" not in str(info.value)
    assert out.exists() == expect_out
    assert _leftovers(tmp_path) == (["out"] if expect_out else [])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_exits_non_zero_with_the_same_one_line_error(case: Case, tmp_path: Path) -> None:
    dataset = case.make(tmp_path)
    out = tmp_path / "out"
    expect_out = out.exists()
    result = runner.invoke(app, ["data", "prepare", "--dataset", dataset, "--out", str(out), *case.cli])
    assert result.exit_code == case.error.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert re.search(case.message, lines[0]), lines[0]
    assert _leftovers(tmp_path) == (["out"] if expect_out else [])


def test_corpus_is_large_and_every_message_is_distinct() -> None:
    assert len(CASES) >= 15
    assert len({c.message for c in CASES}) == len(CASES)


def test_real_cli_process_names_missing_column_and_leaves_no_output(tmp_path: Path) -> None:
    data = _csv(tmp_path / "reviews.csv", [(1, "great film"), (2, "dull")], header="id,text")
    out = tmp_path / "OUT"
    executable = Path(sys.executable).parent / "transferkit"
    proc = subprocess.run([str(executable), "data", "prepare", "--dataset", data, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {data}: missing column(s) 'label'; columns present: id, text"]
    assert not out.exists()
    assert _leftovers(tmp_path) == []
