import json

import pandas as pd
import pytest

from transferkit.errors import ConfigError, DataError, DatasetNotFoundError, SchemaError
from transferkit.evaluate import EvaluateConfig, ForgettingConfig
from transferkit.evaluate.forgetting import gate
from transferkit.evaluate.sources import load_source


def _csv(path, rows, header="text_a,text_b,score"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_pairs_csv_deduplicates_texts(tmp_path):
    src = load_source(_csv(tmp_path / "p.csv", ["a cat,a dog,0.5", "a cat,a car,0.1", "a dog,a car,0.2"]))
    assert src.kind == "pairs" and src.size == 3
    assert src.texts == ["a cat", "a dog", "a car"]
    assert src.pair_index == [(0, 1), (0, 2), (1, 2)] and src.scores == [0.5, 0.1, 0.2]


def test_missing_pair_columns_named(tmp_path):
    with pytest.raises(SchemaError, match=r"p\.csv: missing column\(s\) score"):
        load_source(_csv(tmp_path / "p.csv", ["x,y", "x,z", "y,z"], header="text_a,text_b"))


def test_non_numeric_score_names_row(tmp_path):
    with pytest.raises(SchemaError, match=r"row 2: score 'high' is not a number"):
        load_source(_csv(tmp_path / "p.csv", ["x,y,0.1", "x,z,high", "y,z,0.3"]))


def test_empty_score_and_nan_rejected(tmp_path):
    with pytest.raises(SchemaError, match="row 3: score ''"):
        load_source(_csv(tmp_path / "p.csv", ["x,y,0.1", "x,z,0.2", "y,z,"]))
    with pytest.raises(SchemaError, match="not a finite number"):
        load_source(_csv(tmp_path / "q.csv", ["x,y,0.1", "x,z,nan", "y,z,0.3"]))


def test_fewer_than_three_pairs(tmp_path):
    with pytest.raises(DataError, match="2 pair\\(s\\); at least 3"):
        load_source(_csv(tmp_path / "p.csv", ["x,y,0.1", "x,z,0.2"]))


def test_constant_scores_and_empty_text(tmp_path):
    with pytest.raises(DataError, match="all scores are equal"):
        load_source(_csv(tmp_path / "p.csv", ["x,y,1", "x,z,1", "y,z,1"]))
    with pytest.raises(SchemaError, match="row 1: column 'text_b' must be a non-empty string"):
        load_source(_csv(tmp_path / "q.csv", ["x,,1", "x,z,2", "y,z,3"]))


def test_labelled_and_probe_texts(tmp_path):
    pd.DataFrame({"text": ["good", "bad"], "label": ["pos", "neg"]}).to_parquet(tmp_path / "l.parquet")
    src = load_source(tmp_path / "l.parquet")
    assert src.kind == "labelled" and src.labels == ["pos", "neg"]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["one", "two", "three"]))
    assert load_source(tmp_path / "t.jsonl").kind == "texts"


def test_unrecognised_columns_and_missing_file(tmp_path):
    with pytest.raises(SchemaError, match="unrecognised columns"):
        load_source(_csv(tmp_path / "p.csv", ["1,2"], header="foo,bar"))
    with pytest.raises(DatasetNotFoundError, match="source set not found"):
        load_source(tmp_path / "nope.csv")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported source-set format"):
        load_source(tmp_path / "x.xml")


def test_builtin_lee_has_50_documents():
    src = load_source("builtin:lee-similarity")
    assert src.kind == "pairs" and src.size == 1225 and len(src.texts) == 50


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"mode": "bogus"}, "mode"), ({"mode": "similarity", "metric": "cka"}, "metric"), ({"max_drop": -1}, "max_drop"),
     ({"min_retention": 0}, "min_retention"), ({"batch_size": 0}, "batch_size"), ({"max_length": 1}, "max_length")],
)
def test_forgetting_config_validation(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        ForgettingConfig(base="minilm-l6", model=tmp_path, out_dir=tmp_path / "o", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"split": "dev"}, "split"), ({"primary_metric": "auc"}, "primary_metric"), ({"batch_size": 0}, "batch_size"),
     ({"calibration_bins": 1}, "calibration_bins"), ({"slice_min_size": 0}, "slice_min_size")],
)
def test_evaluate_config_validation(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        EvaluateConfig(model_dir=tmp_path, data_dir=tmp_path, out_dir=tmp_path / "o", **kwargs)


def test_gate_outcomes():
    retention, drop, passed, reason = gate(0.6, 0.3, max_drop=None, min_retention=0.8, metric="pearson", source="s")
    assert (retention, drop, passed) == (0.5, 0.3, False) and "retention 0.5000 < min_retention 0.8" in reason
    assert gate(0.6, 0.3, max_drop=0.35, min_retention=None, metric="pearson", source="s")[2] is True
    assert gate(0.6, 0.3, max_drop=0.2, min_retention=None, metric="pearson", source="s")[2] is False
    assert gate(0.6, 0.3, max_drop=None, min_retention=None, metric="pearson", source="s")[2] is True
