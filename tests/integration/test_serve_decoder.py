"""A decoder (Llama) sequence classifier served by the real local Triton: raw sentences in, labels out.

The model is a tiny random Llama classifier (byte-level BPE, pad = EOS, built offline); the export step writes
its ONNX graph and tokenizer, the deploy step builds the Triton ensemble, and the answers must match the exported
graph run in-process.
"""

import numpy as np
import pytest

from tests.helpers import write_movie_slice
from tests.unit.export import models
from transferkit.export import ExportConfig, export_model
from transferkit.serve.control import TritonControl
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.local import LocalTriton
from transferkit.serve.repository import RepositoryOptions, load_export
from transferkit.serve.smoke import reference_logits

pytestmark = pytest.mark.integration
KEY_ENV = "TK_TEST_DECODER_TRITON_KEY"
KEY = "decoder-model-control-key-123"


def test_llama_classifier_answers_raw_sentences_from_the_local_triton(tmp_path, monkeypatch):
    data = write_movie_slice(tmp_path / "movie", train=48, validation=16, test=16)
    model_dir = models.tiny_llama(data, tmp_path / "model")
    exported = export_model(ExportConfig(model_dir, data, tmp_path / "onnx", max_length=32, threads=2, max_drop=100,
                                         latency_runs=0, throughput_runs=0))
    monkeypatch.setenv(KEY_ENV, KEY)
    repo = tmp_path / "repository"
    repo.mkdir()
    sentences = ["An absolute triumph of a film.", "Boring.", "The plot drags, but the acting is superb."]
    with LocalTriton(repo, restricted_api_key=KEY, exit_timeout=3) as server:
        def deploy(name, variant=None):
            return deploy_model(DeployConfig(onnx_dir=exported.out_dir, name=name, repository=str(repo),
                                             triton_url=server.http_url, api_key_env=KEY_ENV,
                                             options=RepositoryOptions(instance_kind="cpu", variant=variant)))

        # The recommended int8 graph: the deploy step's smoke test compares served and in-process logits within
        # the int8 tolerance (activations are quantized per batch, so batch composition moves them slightly).
        assert deploy("decoder").smoke_test["passed"] is True
        # The fp32 graph: served answers equal the exported graph run in-process.
        assert deploy("decoder-fp32", "fp32").smoke_test["passed"] is True
        with TritonControl(server.http_url) as control:
            served = control.infer_texts("decoder-fp32", sentences)
    expected = reference_logits(load_export(exported.out_dir, variant="fp32"), sentences)
    np.testing.assert_allclose(served["logits"], expected, atol=1e-4)
    assert [label.decode() if isinstance(label, bytes) else str(label) for label in served["label"].ravel()] == [
        ["negative", "positive"][i] for i in expected.argmax(axis=1)]
    # Different lengths in one batch: the last non-padding token of each sentence was read, not the padding.
    assert not np.allclose(expected[0], expected[1], atol=1e-4)
