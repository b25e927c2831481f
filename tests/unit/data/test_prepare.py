"""The data-prep step on real data: contract, determinism, leakage removal, formats, CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.data.builtin import load_builtin
from transferkit.data.prepare import DataPrepConfig, DataPrepResult, prepare_dataset
from transferkit.data.prepared import SPLITS, load_prepared

runner = CliRunner()
FILES = [f"{s}.parquet" for s in SPLITS] + ["labels.json", "schema.json", "stats.json"]


@pytest.fixture(scope="module")
def movies() -> pa.Table:
    table = load_builtin("builtin:movie-sentiment").select(["id", "text", "label", "rating"])
    # The source is grouped by sentiment: shuffle once (seeded) so that slices hold both classes.
    return table.take(np.random.default_rng(0).permutation(table.num_rows))


def _movie_csv(movies: pa.Table, path: Path, rows: int = 400, offset: int = 0) -> Path:
    pacsv.write_csv(movies.slice(offset, rows).select(["text", "label"]), path)
    return path


def _split_texts(out: Path) -> dict[str, list[str]]:
    prepared = load_prepared(out)
    return {split: prepared.texts(split) for split in SPLITS}


def test_builtin_movie_sentiment_prepares_the_full_set(tmp_path: Path) -> None:
    out = tmp_path / "movies"
    result = prepare_dataset(DataPrepConfig(dataset="builtin:movie-sentiment", out=out))
    assert isinstance(result, DataPrepResult)
    prepared = load_prepared(out)
    assert prepared.labels == ["negative", "positive"]
    assert sum(result.rows.values()) >= 10_000
    total = sum(result.rows.values())
    assert abs(result.rows["test"] / total - 0.1) < 0.002 and abs(result.rows["validation"] / total - 0.1) < 0.002
    assert all((out / name).is_file() for name in FILES)
    train = prepared.table("train")
    assert train.schema.field("label").type == pa.int64()
    assert train.schema.field("text").type == pa.string()
    names = train.column("label_name").to_pylist()
    assert [prepared.labels[i] for i in prepared.label_ids("train")] == names
    # Stratified: each evaluation split keeps the class ratio of the whole set within 1%.
    for split in ("validation", "test"):
        share = sum(prepared.label_ids(split)) / len(prepared.label_ids(split))
        assert abs(share - sum(prepared.label_ids("train")) / len(prepared.label_ids("train"))) < 0.01
    # Real tokenizer statistics on all rows (DESIGN.md measured p50 26, p95 46, p99 55, max 79).
    assert result.token_length["sample_size"] == sum(result.rows.values())
    assert 20 <= result.token_length["p50"] <= 32 and result.token_length["max"] < 128
    # max_length auto: the training split's p95 (46 tokens) rounded up to a multiple of 8.
    assert result.long_documents["max_length"] == 48 and result.long_documents["max_length_source"] == "auto"
    assert 0.01 < result.truncation_rate <= 0.05
    kept = result.long_documents["kept_fraction"]
    assert 0.99 < kept["head"] == kept["tail"] == kept["head_tail"] < 1.0 and kept["chunk"] == 1.0
    assert 0.95 <= result.long_documents["documents_whole"] < 1.0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["class_balance"]["train"]["negative"] + stats["class_balance"]["train"]["positive"] == \
        result.rows["train"]
    assert stats["rows"] == result.rows and stats["source_rows"] == result.source_rows
    html = result.report_html.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "Class balance" in html and "Token lengths" not in html  # the title is inside the PNG, not HTML
    assert (out / "report.md").read_text().count("](") == 2
    assert result.metrics["rows_train"] == result.rows["train"]
    assert all(isinstance(v, float) for v in result.metrics.values())
    json.dumps(result.to_dict())


def test_same_seed_gives_identical_files_and_other_seed_differs(movies: pa.Table, tmp_path: Path) -> None:
    data = _movie_csv(movies, tmp_path / "movies.csv", rows=600)
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((first, 3), (second, 3), (other, 4)):
        prepare_dataset(DataPrepConfig(dataset=str(data), out=out, seed=seed, min_class_count=5))
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a, c = _split_texts(first), _split_texts(other)
    assert set(a["test"]) != set(c["test"])
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(c["train"] + c["validation"] + c["test"])


def test_exact_duplicates_across_splits_are_removed_from_evaluation_splits(tmp_path: Path) -> None:
    rows = [(f"repeated review number {i}", "pos" if i % 2 else "neg") for i in range(60) for _ in range(3)]
    rows += [(f"unique review number {i}", "pos" if i % 2 else "neg") for i in range(240)]
    path = tmp_path / "dups.csv"
    pacsv.write_csv(pa.table({"text": [t for t, _ in rows], "label": [lbl for _, lbl in rows]}), path)
    result = prepare_dataset(DataPrepConfig(dataset=str(path), out=tmp_path / "out", seed=1))
    texts = _split_texts(tmp_path / "out")
    assert not set(texts["validation"]) & set(texts["train"])
    assert not set(texts["test"]) & (set(texts["train"]) | set(texts["validation"]))
    assert result.duplicates_removed > 0
    assert sum(result.rows.values()) + result.duplicates_removed == len(rows)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["duplicates_removed"]["total"] == result.duplicates_removed
    assert stats["duplicates_removed"]["validation"] + stats["duplicates_removed"]["test"] == result.duplicates_removed
    # Within-train repeats are kept and counted.
    assert stats["duplicates_within_train"] == len(texts["train"]) - len(set(texts["train"])) > 0


def test_formats_directory_integer_labels_pairs_and_groups(movies: pa.Table, tmp_path: Path) -> None:
    sample = movies.slice(0, 300)
    # Integer labels around 9..11 from the human rating: labels.json sorts them numerically, not as strings.
    ids = [round(r) + 10 for r in sample.column("rating").to_pylist()]
    keep = [i for i, v in enumerate(ids) if ids.count(v) >= 10]
    records = [{"premise": sample["text"][i].as_py(), "hypothesis": f"rated {i}", "y": ids[i],
                "genre": "short" if len(sample["text"][i].as_py()) < 100 else "long"} for i in keep]
    folder = tmp_path / "parts"
    folder.mkdir()
    half = len(records) // 2
    for name, chunk in (("part-0.jsonl", records[:half]), ("part-1.jsonl.gz", records[half:])):
        payload = "".join(json.dumps(r) + "\n" for r in chunk).encode()
        (folder / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    (folder / "_SUCCESS").write_text("")
    out = tmp_path / "out"
    result = prepare_dataset(DataPrepConfig(dataset=str(folder), out=out, text_column="premise",
                                            text_pair_column="hypothesis", label_column="y", group_column="genre",
                                            min_class_count=3))
    prepared = load_prepared(out)
    assert prepared.has_text_pair and prepared.has_group
    expected = sorted({str(r["y"]) for r in records}, key=int)
    assert prepared.labels == expected == result.labels
    assert expected != sorted(expected) and len(expected) >= 3
    assert sum(result.rows.values()) == len(records)
    assert set(prepared.groups("train")) <= {"short", "long"}
    by_premise = {r["premise"]: r for r in records}
    for split in SPLITS:
        for text, pair, label in zip(prepared.texts(split), prepared.text_pairs(split), prepared.label_ids(split),
                                     strict=True):
            assert by_premise[text]["hypothesis"] == pair
            assert prepared.labels[label] == str(by_premise[text]["y"])
    schema = json.loads((out / "schema.json").read_text())
    assert schema["source_files"] == 2 and schema["text_pair_column"] == "hypothesis"


def test_tsv_parquet_and_csv_give_the_same_splits(movies: pa.Table, tmp_path: Path) -> None:
    table = movies.slice(1000, 300).select(["text", "label"])
    pacsv.write_csv(table, tmp_path / "d.tsv", write_options=pacsv.WriteOptions(delimiter="\t"))
    pq.write_table(table, tmp_path / "d.parquet")
    pacsv.write_csv(table, tmp_path / "d.csv")
    outs = []
    for name in ("d.tsv", "d.parquet", "d.csv"):
        outs.append(tmp_path / f"out-{name}")
        prepare_dataset(DataPrepConfig(dataset=str(tmp_path / name), out=outs[-1], seed=9))
    first = _split_texts(outs[0])
    assert all(_split_texts(o) == first for o in outs[1:])


def test_user_split_column_and_max_rows(movies: pa.Table, tmp_path: Path) -> None:
    table = movies.slice(2000, 500).select(["text", "label"])
    split = ["train"] * 400 + [" Validation"] * 50 + ["TEST"] * 50
    pacsv.write_csv(table.append_column("fold", pa.array(split)), tmp_path / "d.csv")
    result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "d.csv"), out=tmp_path / "out",
                                            split_column="fold"))
    assert result.rows["train"] == 400
    assert result.rows["validation"] + result.rows["test"] + result.duplicates_removed == 100
    texts = _split_texts(tmp_path / "out")
    source = table["text"].to_pylist()
    assert set(texts["train"]) == set(source[:400])
    assert set(texts["test"]) <= set(source[450:])

    sampled = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "d.csv"), out=tmp_path / "small",
                                             max_rows=200, seed=5, min_class_count=5))
    assert sampled.source_rows == 500
    assert sum(sampled.rows.values()) + sampled.duplicates_removed == 200


def test_strong_imbalance_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [(f"common text {i}", "common") for i in range(300)] + [(f"rare text {i}", "rare") for i in range(20)]
    pacsv.write_csv(pa.table({"text": [t for t, _ in rows], "label": [lbl for _, lbl in rows]}), tmp_path / "d.csv")
    with caplog.at_level("WARNING"):
        result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "d.csv"), out=tmp_path / "out"))
    assert result.metrics["imbalance_ratio"] == 15.0
    assert any("strong class imbalance" in w and "'common' has 15x" in w for w in result.warnings)
    assert "strong class imbalance" in caplog.text


def test_overwrites_previous_output_atomically(movies: pa.Table, tmp_path: Path) -> None:
    data = _movie_csv(movies, tmp_path / "m.csv", rows=300)
    out = tmp_path / "out"
    out.mkdir()
    (out / "schema.json").write_text("{}")  # a previous output of data prep (other folders are refused)
    (out / "stale.txt").write_text("old run")
    prepare_dataset(DataPrepConfig(dataset=str(data), out=out))
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "out"]


def test_cli_prints_a_summary_and_json(movies: pa.Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _movie_csv(movies, tmp_path / "m.csv", rows=300, offset=5000)
    result = runner.invoke(app, ["data", "prepare", "--dataset", str(data), "--out", str(tmp_path / "o"),
                                 "--seed", "1", "--max-length", "16"])
    assert result.exit_code == 0, result.output
    assert "rows (train / validation / test)" in result.stdout and "truncated at max_length=16" in result.stdout
    assert load_prepared(tmp_path / "o").labels == ["negative", "positive"]
    # transferkit.log's rich handler writes to stdout; keep INFO lines out of the JSON document.
    monkeypatch.setenv("TRANSFERKIT_LOG_LEVEL", "WARNING")
    as_json = runner.invoke(app, ["data", "prepare", "--dataset", str(data), "--out", str(tmp_path / "j"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    assert payload["num_labels"] == 2 and payload["truncation_rate"] < 0.05
    assert sum(payload["rows"].values()) + payload["duplicates_removed"] == 300


def test_csv_with_bom_crlf_and_quoted_multiline_text(tmp_path: Path) -> None:
    rows = [f'"first line {i}\nsecond line, with a comma and ""quotes""",{"a" if i % 2 else "b"}' for i in range(60)]
    (tmp_path / "d.csv").write_bytes(("\ufefftext,label\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "d.csv"), out=tmp_path / "out", min_class_count=5))
    assert sum(result.rows.values()) == 60
    texts = load_prepared(tmp_path / "out").texts("train")
    assert all(t.startswith("first line ") and t.endswith('second line, with a comma and "quotes"') for t in texts)
    assert all("\nsecond" in t and "\r" not in t for t in texts)
