"""Long documents in export and serving: io_spec.json's text_inputs, parity on whole documents, and the real local
Triton emitting windows in the tokenizer and aggregating them per request in the postprocess."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import write_long_document_slice
from transferkit.evaluate.evaluation import EvaluateConfig, evaluate_model
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_long_document_slice(tmp_path_factory.mktemp("long"))


@pytest.fixture(scope="module")
def chunk_run(data, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("chunk") / "model"
    return run_training(TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=out, max_steps=3,
                                    max_length="32", long_documents="chunk", stride=6, aggregation="max",
                                    batch_size=16, seed=0))


@pytest.fixture(scope="module")
def chunk_export(chunk_run, data, tmp_path_factory):
    from transferkit.export.config import ExportConfig
    from transferkit.export.step import export_model

    out = tmp_path_factory.mktemp("export") / "onnx"
    result = export_model(ExportConfig(model_dir=chunk_run.out_dir, data_dir=data, out_dir=out, target="cpu",
                                       max_drop=100.0, threads=2, latency_runs=2, throughput_runs=1,
                                       throughput_batch_size=4))
    return result, out


def test_export_writes_the_long_document_contract_and_gates_parity_on_whole_documents(chunk_export, chunk_run, data,
                                                                                      tmp_path):
    result, out = chunk_export
    spec = json.loads((out / "io_spec.json").read_text())
    assert spec["max_length"] == 32
    assert spec["text_inputs"] == {"max_length": 32, "truncation": "head", "long_documents": "chunk", "stride": 6,
                                   "aggregation": "max", "special_tokens": 2}
    documents = [c for c in result.parity_cases if c.padding == "documents"]
    assert len(documents) == 1 and documents[0].seq_len > documents[0].batch_size  # windows > documents
    assert documents[0].max_abs_diff < 1e-3 and documents[0].labels_agree
    # The fp32 graph's accuracy gate is per document: the same number as the PyTorch evaluation.
    evaluation = evaluate_model(EvaluateConfig(model_dir=chunk_run.out_dir, data_dir=data, out_dir=tmp_path / "e",
                                               progress=False))
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert evaluation is not None
    assert result.variants["fp32"].accuracy == pytest.approx(metrics["accuracy"], abs=1e-9)


def test_triton_windows_documents_and_aggregates_them_per_request(chunk_export, data, tmp_path):
    import shutil

    from transferkit.serve.control import TritonControl
    from transferkit.serve.local import LocalTriton
    from transferkit.serve.repository import RepositoryOptions, build_model_repository, load_export
    from transferkit.serve.smoke import reference_logits

    _, export = chunk_export
    # Serve the fp32 graph (dynamic int8 depends on the batch's activation range: no exact comparison).
    out = tmp_path / "fp32"
    shutil.copytree(export, out)
    spec = json.loads((out / "io_spec.json").read_text())
    spec["recommended_variant"] = "fp32"
    (out / "io_spec.json").write_text(json.dumps(spec))
    exported = load_export(out)
    texts = pq.read_table(data / "test.parquet").column("text").to_pylist()[:6]
    reference = reference_logits(exported, texts)
    repo = tmp_path / "repo"
    fast = build_model_repository(out, "docs", repo, options=RepositoryOptions(instance_kind="cpu"))
    options = RepositoryOptions(instance_kind="cpu")
    ensemble = build_model_repository(out, "docsens", tmp_path / "built", options=options)
    shutil.rmtree(tmp_path / "built" / "docsens" / "configs")  # the production ensemble config, on the local graph
    for model in ensemble.models:
        shutil.copytree(tmp_path / "built" / model, repo / model)
    with LocalTriton(repo, models=[*fast.models, *ensemble.models], exit_timeout=3) as triton, \
            TritonControl(triton.http_url) as control:
        served = {name: control.infer_texts(name, texts) for name in ("docs", "docsens")}
        single = [control.infer_texts("docsens", [text])["logits"][0] for text in texts[:2]]
    for name, outputs in served.items():
        assert outputs["logits"].shape == (len(texts), 2), name  # one row per document, not per window
        np.testing.assert_allclose(outputs["logits"], reference, atol=1e-4, err_msg=name)
        assert [label.decode() if isinstance(label, bytes) else label for label in outputs["label"].reshape(-1)] == \
            [["negative", "positive"][i] for i in reference.argmax(axis=1)]
    np.testing.assert_allclose(np.stack(single), reference[:2], atol=1e-4)
