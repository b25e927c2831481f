"""Parity for other architectures: tiny random GPT-2, Llama and RoBERTa classifiers (byte-level BPE built offline)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from tests.unit.export import models
from tests.unit.export.conftest import quick
from transferkit.export import ExportConfig, IOSpec, export_model


@pytest.mark.parametrize(("build", "model_type"), [(models.tiny_gpt2, "gpt2"), (models.tiny_llama, "llama"),
                                                  (models.tiny_roberta, "roberta")])
def test_decoder_and_roberta_classifiers_export_with_parity(build, model_type: str, movie_dir: Path,
                                                            tmp_path: Path) -> None:
    model_dir = build(movie_dir, tmp_path / "model")
    # Random weights: accuracy is meaningless, so the gate is opened; parity is what is tested here.
    result = export_model(ExportConfig(model_dir, movie_dir, tmp_path / "onnx",
                                       **quick(max_drop=100, latency_runs=0, throughput_runs=0)))
    assert result.parity_max_abs_diff <= 1e-4
    assert all(c.labels_agree for c in result.parity_cases) and len(result.parity_cases) >= 4
    spec = IOSpec.load(result.out_dir)
    assert spec.model_type == model_type
    # None of these architectures takes segment ids from its tokenizer.
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    session = ort.InferenceSession(str(result.out_dir / "model.int8.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert spec.preprocessing["pad_token_id"] == (2 if model_type == "roberta" else 0)
    if model_type == "llama":  # the last non-padding token classifies: padding must be on the right
        assert spec.preprocessing.get("padding_side", "right") == "right"


def test_text_pair_dataset_exports_with_parity(movie_dir: Path, tmp_path: Path) -> None:
    """Sentence-pair data (text_pair column): the pair is tokenized together in parity, trace and gate."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = shutil.copytree(movie_dir, tmp_path / "pairs")
    for split in ("train", "validation", "test"):
        table = pq.read_table(data / f"{split}.parquet")
        pq.write_table(table.append_column("text_pair", pa.array(table.column("text").to_pylist()[::-1])),
                       data / f"{split}.parquet")
    schema = json.loads((data / "schema.json").read_text())
    (data / "schema.json").write_text(json.dumps({**schema, "text_pair_column": "text_pair"}))
    model_dir = models.tiny_roberta(data, tmp_path / "model")
    result = export_model(ExportConfig(model_dir, data, tmp_path / "onnx",
                                       **quick(max_drop=100, latency_runs=0, throughput_runs=0)))
    assert result.parity_max_abs_diff <= 1e-4
    assert IOSpec.load(result.out_dir).preprocessing["text_pair"] is True
