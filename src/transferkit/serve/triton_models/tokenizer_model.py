"""Triton python-backend model: raw strings (or string pairs) in, token tensors out (``tokenizers``).

Copied into ``<name>_tokenizer/<version>/model.py`` with the exported tokenizer files in
``<version>/tokenizer/``. Each request is padded to its own longest sequence, rounded up to a multiple
of ``pad_to_multiple_of`` so that requests of similar length share a shape and can batch even on a
backend without ragged batching; sequences are truncated to ``max_length``.

The work is done by :class:`TextEncoder`, which the local text fast path (``text_model.py``) also runs
in its own process.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def model_params(config):
    """The ``parameters`` of a parsed model config as a plain ``{key: string}`` dict."""
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def read_texts(requests, names):
    """Every request's strings, one list per input name, and the number of rows of each request."""
    columns, sizes = [[] for _ in names], []
    for request in requests:
        for column, name in zip(columns, names, strict=False):
            raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
            column.extend(t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in raw)
        sizes.append(len(columns[0]) - sum(sizes))
    return columns, sizes


class TextEncoder:
    """A fast tokenizer producing one padded array per graph input and request.

    Args:
        tokenizer_file: ``tokenizer.json``.
        params: Model parameters (``max_length``, ``pad_to_multiple_of``, ``pad_id``).
        fields: ``(name, numpy dtype)`` of the tensors to produce (``input_ids``, ``attention_mask``,
            ``token_type_ids``).
    """

    def __init__(self, tokenizer_file, params, fields):
        self.tokenizer = Tokenizer.from_file(tokenizer_file)
        self.tokenizer.no_padding()
        max_length = int(params.get("max_length", "0"))
        if max_length > 0:
            self.tokenizer.enable_truncation(max_length=max_length)
        self.multiple = max(1, int(params.get("pad_to_multiple_of", "1")))
        self.pad_id = int(params.get("pad_id", "0"))
        self.fields = list(fields)

    def encode(self, columns, sizes):
        """Tokenize all rows in one ``encode_batch`` call; returns one ``{name: array}`` per request."""
        batch = columns[0] if len(columns) == 1 else list(zip(columns[0], columns[1], strict=False))
        encodings = self.tokenizer.encode_batch(batch)
        per_request = []
        start = 0
        for size in sizes:
            chunk = encodings[start : start + size]
            start += size
            longest = max((len(e.ids) for e in chunk), default=1)
            width = -(-max(longest, 1) // self.multiple) * self.multiple
            arrays = {}
            for name, dtype in self.fields:
                pad = self.pad_id if name == "input_ids" else 0
                array = np.full((len(chunk), width), pad, dtype=dtype)
                for row, encoding in enumerate(chunk):
                    values = getattr(encoding, _FIELDS[name])
                    array[row, : len(values)] = values
                arrays[name] = array
            per_request.append(arrays)
        return per_request


class TritonPythonModel:
    """Fast tokenizer loaded from ``tokenizer/tokenizer.json``."""

    def initialize(self, args):
        """Load the tokenizer and the output layout from the config."""
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        # One input (text) or two (text, text_pair) for sentence-pair models.
        self.text_inputs = [i["name"] for i in config["input"]]
        outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        self.encoder = TextEncoder(os.path.join(folder, "tokenizer.json"), model_params(config), outputs)

    def execute(self, requests):
        """Tokenize every request's strings in one ``encode_batch`` call."""
        columns, sizes = read_texts(requests, self.text_inputs)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in arrays.items()])
                for arrays in self.encoder.encode(columns, sizes)]
