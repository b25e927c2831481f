"""The served tokenizer (python-backend model file, ``tokenizers``) cuts and windows long texts exactly as training
and evaluation do (:mod:`transferkit.data.long_text`), on MiniLM's real ``tokenizer.json``."""

import importlib.util
import sys
import types

import numpy as np
import pytest

from transferkit.data.long_text import TextInputs, encode_documents
from transferkit.models.loading import load_tokenizer
from transferkit.serve import repository


def _load_model_module():
    # The module imports Triton's python-backend utilities at the top; TextEncoder itself never uses them.
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    path = repository._MODELS_PKG / "tokenizer_model.py"
    spec = importlib.util.spec_from_file_location("tk_tokenizer_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    tokenizer = load_tokenizer("minilm-l6")
    directory = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(str(directory))
    return tokenizer, str(directory / "tokenizer.json")


TEXTS = [" ".join(f"word{i}" for i in range(n)) for n in (3, 40, 157)] + ["A short review."]


@pytest.mark.parametrize("spec", [
    TextInputs(32, "head"), TextInputs(32, "tail"), TextInputs(32, "head_tail"),
    TextInputs(32, long_documents="chunk", stride=7), TextInputs(32, long_documents="chunk", stride=0),
], ids=["head", "tail", "head_tail", "chunk-7", "chunk-0"])
def test_served_rows_equal_the_library_rows(tokenizer_file, spec):
    served = _load_model_module()
    tokenizer, path = tokenizer_file
    params = {"max_length": str(spec.max_length), "truncation": spec.truncation,
              "long_documents": spec.long_documents, "stride": str(spec.stride), "pad_id": "0"}
    fields = [("input_ids", np.int64), ("attention_mask", np.int64), ("token_type_ids", np.int64)]
    encoder = served.TextEncoder(path, params, fields)
    requests = encoder.encode([TEXTS], [len(TEXTS)])
    assert len(requests) == 1
    arrays = requests[0]
    features, doc_index = encode_documents(tokenizer, TEXTS, spec)
    assert arrays["input_ids"].shape[0] == len(features)
    for row, feature in enumerate(features):
        length = int(arrays["attention_mask"][row].sum())
        assert arrays["input_ids"][row, :length].tolist() == feature["input_ids"]
        assert arrays["token_type_ids"][row, :length].tolist() == feature["token_type_ids"]
    if spec.chunked:
        assert arrays["window_doc"].reshape(-1).tolist() == doc_index.tolist()
        assert len(features) > len(TEXTS)
    else:
        assert "window_doc" not in arrays


def test_a_request_needing_too_many_windows_is_refused(tokenizer_file):
    served = _load_model_module()
    _, path = tokenizer_file
    encoder = served.TextEncoder(path, {"max_length": "16", "long_documents": "chunk", "stride": "2",
                                        "max_windows": "4"}, [("input_ids", np.int64)])
    with pytest.raises(ValueError, match=r"^a request of 1 texts needs \d+ windows of 16 tokens; at most 4 per "
                                         r"request \(send fewer texts per request\)$"):
        encoder.encode([[TEXTS[2]]], [1])
