"""Triton python-backend model: raw strings (or string pairs) in, token tensors out (``tokenizers``).

Copied into ``<name>_tokenizer/<version>/model.py`` with the exported tokenizer files in
``<version>/tokenizer/``. Each request is padded to its own longest sequence, rounded up to a multiple
of ``pad_to_multiple_of`` so that requests of similar length share a shape and can batch even on a
backend without ragged batching; sequences are truncated to ``max_length``.

The work is done by :class:`TextEncoder`, which the local text fast path (``text_model.py``) also runs
in its own process.

Long texts (``io_spec.json`` ``text_inputs``; parameters ``truncation``, ``long_documents``, ``stride``): the
same rule as ``transferkit.data.long_text``: the content between the leading and trailing special tokens is
cut (``tail``: the last tokens; ``head_tail``: the first quarter of the budget and the rest from the end) or,
for ``chunk``, split into windows sharing ``stride`` tokens; a request of N texts then yields W >= N rows and
the extra output ``window_doc`` (``[W, 1]``, the text index of each row within its request) lets the
postprocess model aggregate the W rows of logits back to N.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

WINDOW_DOC = "window_doc"


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
        self.tokenizer.no_truncation()
        self.max_length = int(params.get("max_length", "0"))
        self.truncation = params.get("truncation", "head")
        self.chunk = params.get("long_documents", "truncate") == "chunk"
        self.stride = int(params.get("stride", "0"))
        self.max_windows = int(params.get("max_windows", "0"))
        self.plain = self.truncation == "head" and not self.chunk
        if self.max_length > 0 and self.plain:
            self.tokenizer.enable_truncation(max_length=self.max_length)
        self.multiple = max(1, int(params.get("pad_to_multiple_of", "1")))
        self.pad_id = int(params.get("pad_id", "0"))
        self.fields = [(name, dtype) for name, dtype in fields if name != WINDOW_DOC]

    def _rows(self, encoding):
        """``(ids, type_ids)`` of the rows one text becomes (one, or one per window)."""
        if self.plain or self.max_length <= 0:
            return [(encoding.ids, encoding.type_ids)]
        ids, mask = encoding.ids, encoding.special_tokens_mask
        start, end = 0, len(ids)
        while start < end and mask[start]:
            start += 1
        while end > start and mask[end - 1]:
            end -= 1
        lead, content, trail = ids[:start], ids[start:end], ids[end:]
        budget = self.max_length - len(lead) - len(trail)
        if self.chunk:
            starts = [0]
            while starts[-1] + budget < len(content):
                starts.append(starts[-1] + budget - self.stride)
            pieces = [content[s : s + budget] for s in starts]
        elif len(content) <= budget:
            pieces = [content]
        elif self.truncation == "tail":
            pieces = [content[len(content) - budget :]]
        elif self.truncation == "head_tail":
            head = -(-budget // 4)
            pieces = [content[:head] + content[len(content) - (budget - head) :]]
        else:
            pieces = [content[:budget]]
        return [(lead + piece + trail, [0] * (len(lead) + len(piece) + len(trail))) for piece in pieces]

    def encode(self, columns, sizes):
        """Tokenize all rows in one ``encode_batch`` call; returns one ``{name: array}`` per request.

        With ``chunk``, a request's arrays hold one row per window and ``window_doc`` ``[W, 1]``.

        Raises:
            ValueError: A request needs more than ``max_windows`` windows.
        """
        batch = columns[0] if len(columns) == 1 else list(zip(columns[0], columns[1], strict=False))
        encodings = self.tokenizer.encode_batch(batch)
        per_request = []
        start = 0
        for size in sizes:
            rows, docs = [], []
            for doc, encoding in enumerate(encodings[start : start + size]):
                for row in self._rows(encoding):
                    rows.append(row)
                    docs.append(doc)
            start += size
            if self.max_windows and len(rows) > self.max_windows:
                raise ValueError(f"a request of {size} texts needs {len(rows)} windows of {self.max_length} tokens; "
                                 f"at most {self.max_windows} per request (send fewer texts per request)")
            longest = max((len(ids) for ids, _ in rows), default=1)
            width = -(-max(longest, 1) // self.multiple) * self.multiple
            arrays = {}
            for name, dtype in self.fields:
                pad = self.pad_id if name == "input_ids" else 0
                array = np.full((len(rows), width), pad, dtype=dtype)
                for index, (ids, type_ids) in enumerate(rows):
                    values = ids if name == "input_ids" else (type_ids if name == "token_type_ids" else [1] * len(ids))
                    array[index, : len(values)] = values
                arrays[name] = array
            if self.chunk:
                arrays[WINDOW_DOC] = np.asarray(docs, dtype=np.int64).reshape(-1, 1)
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
