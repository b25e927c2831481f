"""Triton python-backend model: raw strings (or string pairs) in, token tensors out (``tokenizers``).

Copied into ``<name>_tokenizer/<version>/model.py`` with the exported tokenizer files in
``<version>/tokenizer/``. Each request is padded to its own longest sequence, rounded up to a multiple
of ``pad_to_multiple_of`` so that requests of similar length share a shape and can batch even on a
backend without ragged batching; sequences are truncated to ``max_length``.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TritonPythonModel:
    """Fast tokenizer loaded from ``tokenizer/tokenizer.json``."""

    def initialize(self, args):
        """Load the tokenizer and the output layout from the config."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tokenizer.no_padding()
        max_length = int(params.get("max_length", "0"))
        if max_length > 0:
            self.tokenizer.enable_truncation(max_length=max_length)
        self.multiple = max(1, int(params.get("pad_to_multiple_of", "1")))
        self.pad_id = int(params.get("pad_id", "0"))
        # One input (text) or two (text, text_pair) for sentence-pair models.
        self.text_inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]

    def execute(self, requests):
        """Tokenize every request's strings in one ``encode_batch`` call."""
        columns, sizes = [[] for _ in self.text_inputs], []
        for request in requests:
            for column, name in zip(columns, self.text_inputs, strict=False):
                raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
                column.extend(t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in raw)
            sizes.append(len(columns[0]) - sum(sizes))
        batch = columns[0] if len(columns) == 1 else list(zip(columns[0], columns[1], strict=False))
        encodings = self.tokenizer.encode_batch(batch)
        responses = []
        start = 0
        for size in sizes:
            chunk = encodings[start : start + size]
            start += size
            longest = max((len(e.ids) for e in chunk), default=1)
            width = -(-max(longest, 1) // self.multiple) * self.multiple
            tensors = []
            for name, dtype in self.outputs:
                pad = self.pad_id if name == "input_ids" else 0
                array = np.full((len(chunk), width), pad, dtype=dtype)
                for row, encoding in enumerate(chunk):
                    values = getattr(encoding, _FIELDS[name])
                    array[row, : len(values)] = values
                tensors.append(pb_utils.Tensor(name, array))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
