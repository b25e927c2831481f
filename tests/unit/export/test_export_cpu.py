"""CPU export of a fitted MiniLM classifier: parity, io_spec, int8 graph, accuracy gate, report (exported once)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.unit.export.conftest import quick
from transferkit.data.prepared import load_prepared
from transferkit.errors import ParityError
from transferkit.export import ExportConfig, IOSpec, check_parity, export_model


@pytest.fixture(scope="module")
def exported(minilm_dir: Path, movie_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export-cpu") / "onnx"
    return export_model(ExportConfig(minilm_dir, movie_dir, out, target="cpu", **quick()))


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_directory_layout_and_recommendation(exported) -> None:
    out = exported.out_dir
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "io_spec.json", "labels.json", "tokenizer", "metrics.json",
            "report.md", "report.html"} <= names
    assert not {"model.qdq.onnx", "model.fp16.onnx"} & names  # cpu target builds dynamic int8 only
    assert exported.recommended_variant == "int8" and exported.recommended_file == "model.int8.onnx"
    assert exported.passed and not exported.fallback
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert oct((out / "io_spec.json").stat().st_mode & 0o777) == "0o644"


def test_parity_gate_covers_several_shapes_within_atol(exported) -> None:
    cases = exported.parity_cases
    assert {c.batch_size for c in cases} >= {1, 4, 8}
    assert len({c.seq_len for c in cases}) >= 3
    assert any(c.seq_len == 32 for c in cases) and any(c.seq_len <= 8 for c in cases)
    assert all(c.max_abs_diff <= 1e-4 and c.labels_agree for c in cases)
    assert exported.parity_max_abs_diff == max(c.max_abs_diff for c in cases)


def test_io_spec_describes_graph_and_preprocessing(exported) -> None:
    spec = IOSpec.load(exported.out_dir)
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(t.dtype == "int64" and t.dims == [-1, -1] for t in spec.inputs)
    assert [(t.name, t.dtype, t.dims) for t in spec.outputs] == [("logits", "float32", [-1, 2])]
    assert spec.labels == ["negative", "positive"] == json.loads((exported.out_dir / "labels.json").read_text())
    assert spec.max_length == 32 and spec.opset == 17 and spec.target == "cpu"
    assert set(spec.variants) == {"fp32", "int8"} and spec.recommended_variant == "int8"
    assert spec.variants["int8"].precision == "int8"
    assert spec.variants["int8"].size_bytes == (exported.out_dir / "model.int8.onnx").stat().st_size
    assert spec.variants["int8"].primary_metric == exported.variants["int8"].accuracy
    assert "tokenizer.json" in spec.tokenizer_files
    assert spec.preprocessing["pad_token_id"] == 0 and spec.preprocessing["truncation"] is True
    session = ort.InferenceSession(str(exported.out_dir / spec.recommended_file))
    assert [i.name for i in session.get_inputs()] == [t.name for t in spec.inputs]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    dims = [i.shape for i in session.get_inputs()]
    assert all(isinstance(d[0], str) and isinstance(d[1], str) for d in dims)  # dynamic batch and sequence


def test_int8_graph_is_quantized_and_about_4x_smaller(exported) -> None:
    ops = _ops(exported.out_dir / "model.int8.onnx")
    assert ops["MatMulInteger"] >= 36 and ops["DynamicQuantizeLinear"] >= 1  # 6 layers x 6 weight matmuls
    assert ops["MatMul"] <= 12  # only the activation x activation attention products stay float
    ratio = exported.variants["fp32"].size_bytes / exported.variants["int8"].size_bytes
    assert 3.5 <= ratio <= 4.5


def test_cpu_graph_keeps_residual_adds_out_of_skip_layernorm(exported) -> None:
    ops = _ops(exported.out_dir / "model.onnx")
    assert exported.graph_rewrites["residual_add_as_sum"] == ops["Sum"] == 13  # embeddings + 2 per layer
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(exported.out_dir.parent / "optimized.onnx")
    ort.InferenceSession(str(exported.out_dir / "model.int8.onnx"), options)
    optimized = _ops(exported.out_dir.parent / "optimized.onnx")
    assert optimized["SkipLayerNormalization"] == 0 and optimized["LayerNormalization"] == 13


def test_accuracy_gate_keeps_int8_within_max_drop(exported, movie_dir: Path) -> None:
    fp32, int8 = exported.variants["fp32"], exported.variants["int8"]
    labels = load_prepared(movie_dir).label_ids("test")
    assert fp32.accuracy == 1.0  # the head was fitted on these rows
    assert int8.kept and int8.accuracy_drop_pt <= 0.5
    assert int8.accuracy_drop_pt == pytest.approx((fp32.accuracy - int8.accuracy) * 100)
    assert int8.agreement_with_fp32 * len(labels) == pytest.approx(round(int8.agreement_with_fp32 * len(labels)))
    for variant in (fp32, int8):
        assert variant.latency_b1_p50_ms > 0 and variant.latency_b1_p95_ms >= variant.latency_b1_p50_ms
        assert variant.throughput_seq_per_s > 0


def test_metrics_and_report(exported) -> None:
    metrics = json.loads(exported.metrics_path.read_text())
    assert metrics["recommended_variant"] == "int8" and metrics["passed"] is True
    assert metrics["scalars"]["int8_accuracy"] == exported.variants["int8"].accuracy
    assert metrics["scalars"]["fp32_size_mb"] > 80
    assert metrics["out_dir"] == str(exported.out_dir)
    json.dumps(exported.to_dict())
    html = exported.report_html.read_text()
    assert "data:image/png;base64," in html and "Parity gate" in html
    markdown = exported.report_md.read_text()
    assert "| int8 | model.int8.onnx |" in markdown and "kept" in markdown


def test_saved_tokenizer_json_alone_reproduces_the_model_inputs(exported, movie_dir: Path) -> None:
    """Serving tokenizes with the `tokenizers` library from tokenizer.json; truncation and padding travel in it."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    texts = [*load_prepared(movie_dir).texts("validation")[:6], "word " * 100]
    raw = Tokenizer.from_file(str(exported.out_dir / "tokenizer" / "tokenizer.json"))
    batch = raw.encode_batch(texts)
    hf = AutoTokenizer.from_pretrained(exported.out_dir / "tokenizer")(texts, padding=True, truncation=True,
                                                                       max_length=32, return_tensors="np")
    assert np.array_equal(np.array([e.ids for e in batch]), hf["input_ids"])
    assert np.array_equal(np.array([e.attention_mask for e in batch]), hf["attention_mask"])
    assert hf["input_ids"].shape[1] == 32


def test_parity_gate_raises_instead_of_warning(exported, minilm_dir: Path, movie_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    session = ort.InferenceSession(str(exported.out_dir / "model.int8.onnx"))  # a graph that drifts
    texts = load_prepared(movie_dir).texts("validation")
    with pytest.raises(ParityError, match=r"max \|logit diff\| .* > atol 0.0001 x logit scale .* at batch 1"):
        check_parity(model, session, tokenizer, texts, None, ["input_ids", "attention_mask", "token_type_ids"],
                     32, 1e-4)


def _session_with_trim_length(path: Path) -> ort.InferenceSession:
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info("transferkit_trim/keep", onnx.TensorProto.INT64, [1]))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx"])
def test_graph_trims_trailing_padding_without_changing_logits(exported, variant: str) -> None:
    from transformers import AutoTokenizer

    assert exported.graph_rewrites["trim_trailing_padding"] == 1
    tokenizer = AutoTokenizer.from_pretrained(exported.out_dir / "tokenizer")
    texts = ["a warm and funny film", "dull", "the plot never comes together and the actors look bored"]
    session = _session_with_trim_length(exported.out_dir / variant)
    longest = dict(tokenizer(texts, padding="longest", return_tensors="np"))
    to_max = dict(tokenizer(texts, padding="max_length", max_length=32, return_tensors="np"))
    real_length = int(longest["attention_mask"].sum(axis=1).max())
    assert to_max["input_ids"].shape[1] == 32 > real_length
    logits_longest, keep_longest = session.run(None, longest)
    logits_max, keep_max = session.run(None, to_max)
    assert keep_longest.tolist() == keep_max.tolist() == [real_length]  # 32 columns in, only the used ones run
    np.testing.assert_allclose(logits_max, logits_longest, atol=1e-5)
    tokenizer.padding_side = "left"
    left = dict(tokenizer(texts, padding="max_length", max_length=32, return_tensors="np"))
    _, keep_left = session.run(None, left)
    assert keep_left.tolist() == [32]  # left padding: the last column is real, nothing is trimmed
