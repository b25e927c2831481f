"""Long documents: how a text longer than ``max_length`` tokens reaches a sequence classifier.

Three choices, the same in training, evaluation, export and serving (``text_inputs.json`` beside a trained
model, ``text_inputs`` in ``io_spec.json``):

- ``truncation head`` (one window, the first tokens), ``tail`` (the last tokens) or ``head_tail`` (the first
  quarter of the token budget from the start, the rest from the end: Sun et al. 2019, "How to fine-tune BERT
  for text classification", kept 128 head + 382 tail tokens of 510);
- ``long_documents chunk``: the whole document in overlapping windows of ``max_length`` tokens (special tokens
  included) that share ``stride`` tokens with the previous window; every window is classified and the logits
  of a document's windows are aggregated: ``mean`` (the document's overall topic) or ``max`` (per class, the
  strongest window: "any window says so" labels). In training each window inherits its document's label.

``max_length auto`` is the 95th percentile of the training split's token lengths, rounded up to a multiple of
8 and capped by the model's limit.

Windows are built on the ``tokenizers`` encoding of the whole text with its special tokens: the leading and
trailing special tokens are kept, the content between them is cut. The Triton tokenizer model
(``serve/triton_models/tokenizer_model.py``) implements the same rule on the same ``tokenizer.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError
from transferkit.io import write_json

TEXT_INPUTS_FILE = "text_inputs.json"
TRUNCATIONS = ("head", "tail", "head_tail")
LONG_DOCUMENTS = ("truncate", "chunk")
AGGREGATIONS = ("mean", "max")
CHUNK_LOSSES = ("window", "document")
AUTO = "auto"
AUTO_PERCENTILE = 95
AUTO_FLOOR = 16
# max_length auto measures lengths on a seeded sample of at most this many training rows.
AUTO_SAMPLE = 20_000
# Share of the content budget head_tail takes from the start of the text (Sun et al.: 128 of 510).
HEAD_SHARE = 0.25


def parse_max_length(value: Any, field: str = "max_length") -> int | str | None:
    """``None``, ``"auto"`` or a positive int from a CLI/KFP value (``"256"``, ``256``, ``"auto"``).

    Raises:
        ConfigError: Anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{field}: expected a number of tokens or 'auto', got {value!r}") from None
    if isinstance(number, bool) or number < 1:
        raise ConfigError(f"{field}: expected a positive number of tokens or 'auto', got {value!r}")
    return number


def auto_sample_rows(count: int, seed: int) -> np.ndarray:
    """Indices of the training rows whose lengths ``max_length auto`` measures (all, or a seeded sorted sample)."""
    rows = np.arange(count)
    if count > AUTO_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(count, size=AUTO_SAMPLE, replace=False))
    return rows


def auto_max_length(lengths: Sequence[int] | np.ndarray, model_limit: int) -> int:
    """The 95th percentile of ``lengths`` rounded up to a multiple of 8, at least 16, capped at ``model_limit``."""
    values = np.asarray(lengths, dtype=np.float64)
    p95 = float(np.percentile(values, AUTO_PERCENTILE)) if len(values) else float(AUTO_FLOOR)
    return int(min(max(math.ceil(p95 / 8) * 8, AUTO_FLOOR), model_limit))


@dataclass(frozen=True)
class TextInputs:
    """How texts become model inputs (saved with the model as ``text_inputs.json``)."""

    max_length: int
    truncation: str = "head"
    long_documents: str = "truncate"
    stride: int = 0
    aggregation: str = "mean"
    special_tokens: int = 2

    @property
    def window(self) -> int:
        """Content tokens per window (``max_length`` minus the special tokens)."""
        return self.max_length - self.special_tokens

    @property
    def chunked(self) -> bool:
        """Whether documents are split into windows."""
        return self.long_documents == "chunk"

    @property
    def plain(self) -> bool:
        """Head truncation of one window: what a tokenizer's own ``truncation=True`` does."""
        return not self.chunked and self.truncation == "head"

    def check(self) -> TextInputs:
        """Validate the combination.

        Raises:
            ConfigError: A choice not in the lists, ``max_length`` not above the special tokens, ``stride``
                not below the window.
        """
        for name, value, choices in (("truncation", self.truncation, TRUNCATIONS),
                                     ("long_documents", self.long_documents, LONG_DOCUMENTS),
                                     ("aggregation", self.aggregation, AGGREGATIONS)):
            if value not in choices:
                raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        if self.max_length <= self.special_tokens:
            raise ConfigError(f"max_length: {self.max_length} leaves no room for text after the tokenizer's "
                              f"{self.special_tokens} special tokens; expected more than {self.special_tokens}")
        if self.stride < 0:
            raise ConfigError(f"stride: expected a non-negative number of overlapping tokens, got {self.stride}")
        if self.chunked and self.stride >= self.window:
            raise ConfigError(f"stride: {self.stride} overlapping tokens must be below the window of {self.window} "
                              f"text tokens (max_length {self.max_length} minus {self.special_tokens} special "
                              "tokens)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``text_inputs.json``, ``io_spec.json``)."""
        return asdict(self)

    def save(self, directory: Path | str) -> Path:
        """Write ``text_inputs.json`` into a model directory."""
        return write_json(Path(directory) / TEXT_INPUTS_FILE, self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TextInputs:
        """From :meth:`to_dict` output (unknown keys ignored)."""
        keys = {"max_length", "truncation", "long_documents", "stride", "aggregation", "special_tokens"}
        return cls(**{k: v for k, v in raw.items() if k in keys})

    def describe(self) -> str:
        """One phrase for reports: ``chunks of 128 tokens, stride 32, mean of logits``."""
        if self.chunked:
            return (f"windows of {self.max_length} tokens overlapping by {self.stride}, {self.aggregation} of "
                    "window logits per document")
        return f"{self.truncation} truncation at {self.max_length} tokens"


def read_text_inputs(model_dir: Path | str | None) -> TextInputs | None:
    """The ``text_inputs.json`` saved with a trained model, or None (older models: head truncation)."""
    import json

    if model_dir is None:
        return None
    path = Path(model_dir) / TEXT_INPUTS_FILE
    if not path.is_file():
        return None
    return TextInputs.from_dict(json.loads(path.read_text(encoding="utf-8")))


def backend_tokenizer(tokenizer: Any) -> Any:
    """A private copy of a fast tokenizer's ``tokenizers.Tokenizer`` without truncation or padding.

    Raises:
        ConfigError: A slow (Python) tokenizer.
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"truncation/long_documents: tokenizer {type(tokenizer).__name__} is not a fast tokenizer; "
                          "expected one with a tokenizer.json for tail, head_tail or chunk")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def special_token_count(tokenizer: Any) -> int:
    """Special tokens the tokenizer adds to one text (``[CLS]``/``[SEP]``: 2)."""
    return int(tokenizer.num_special_tokens_to_add(pair=False))


def split_encoding(ids: Sequence[int], special_mask: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """``(leading special tokens, content, trailing special tokens)`` of one encoded text."""
    ids, mask = list(ids), list(special_mask)
    start = 0
    while start < len(ids) and mask[start]:
        start += 1
    end = len(ids)
    while end > start and mask[end - 1]:
        end -= 1
    return ids[:start], ids[start:end], ids[end:]


def cut(content: Sequence[int], budget: int, truncation: str) -> list[int]:
    """The content tokens one window keeps under ``truncation``."""
    content = list(content)
    if len(content) <= budget:
        return content
    if truncation == "head":
        return content[:budget]
    if truncation == "tail":
        return content[len(content) - budget:]
    head = math.ceil(budget * HEAD_SHARE)
    return content[:head] + content[len(content) - (budget - head):]


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows covering ``n_tokens`` content tokens (one window for a short text)."""
    step = window - stride
    starts = [0]
    while starts[-1] + window < n_tokens:
        starts.append(starts[-1] + step)
    return starts


def window_ids(encoding: Any, spec: TextInputs) -> list[list[int]]:
    """Token ids (special tokens included) of the rows one ``tokenizers.Encoding`` (no truncation) becomes."""
    lead, content, trail = split_encoding(encoding.ids, encoding.special_tokens_mask)
    if spec.chunked:
        pieces = [content[s:s + spec.window] for s in window_starts(len(content), spec.window, spec.stride)]
    else:
        pieces = [cut(content, spec.window, spec.truncation)]
    return [lead + piece + trail for piece in pieces]


def encode_documents(tokenizer: Any, texts: Sequence[str], spec: TextInputs) -> tuple[list[dict[str, list[int]]],
                                                                                       np.ndarray]:
    """Model inputs for every window of every text, and the text index of each window.

    Returns:
        ``(features, doc_index)``: one ``{input_ids, attention_mask, token_type_ids}`` per window (the keys
        ``tokenizer`` returns), and an int array of the same length.
    """
    backend = backend_tokenizer(tokenizer)
    keys = set(tokenizer.model_input_names)
    features: list[dict[str, list[int]]] = []
    doc_index: list[int] = []
    for row, encoding in enumerate(backend.encode_batch(list(texts))):
        for ids in window_ids(encoding, spec):
            feature = {"input_ids": ids}
            if "attention_mask" in keys:
                feature["attention_mask"] = [1] * len(ids)
            if "token_type_ids" in keys:
                feature["token_type_ids"] = [0] * len(ids)
            features.append(feature)
            doc_index.append(row)
    return features, np.asarray(doc_index, dtype=np.int64)


def aggregate(logits: np.ndarray, doc_index: np.ndarray, n_docs: int, how: str) -> np.ndarray:
    """Per-document logits from per-window logits: ``mean`` or per-class ``max`` over a document's windows."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.zeros((n_docs, logits.shape[1]), dtype=np.float64)
    if how == "max":
        out[:] = -np.inf
        np.maximum.at(out, doc_index, logits)
        return out
    np.add.at(out, doc_index, logits)
    counts = np.bincount(doc_index, minlength=n_docs).astype(np.float64)
    return out / np.maximum(counts, 1.0)[:, None]


def aggregate_tensor(logits: Any, doc_ids: Any, n_docs: int, how: str) -> Any:
    """:func:`aggregate` on torch tensors, differentiable (training with ``--chunk-loss document``).

    Args:
        logits: ``(windows, classes)`` window logits.
        doc_ids: ``(windows,)`` document of each window, in ``range(n_docs)``, every document present.
        n_docs: Number of documents.
        how: ``mean`` or per-class ``max``.
    """
    import torch

    index = doc_ids.to(logits.device).unsqueeze(1).expand_as(logits)
    out = torch.zeros((n_docs, logits.shape[1]), dtype=logits.dtype, device=logits.device)
    return out.scatter_reduce(0, index, logits, reduce="amax" if how == "max" else "mean", include_self=False)


def kept_fractions(content_lengths: Sequence[int] | np.ndarray, window: int) -> dict[str, float]:
    """Mean share of each document's tokens each choice shows the model, and windows per document for chunk.

    ``head``, ``tail`` and ``head_tail`` keep the same number of tokens (``window``); they differ in which.
    """
    lengths = np.maximum(np.asarray(content_lengths, dtype=np.float64), 1.0)
    one_window = float(np.mean(np.minimum(lengths, window) / lengths)) if len(lengths) else 1.0
    return {"head": one_window, "tail": one_window, "head_tail": one_window, "chunk": 1.0}


def check_long_document_options(spec_like: Any, *, pairs: bool, where: str) -> None:
    """Pair data keeps the tokenizer's own head truncation: tail, head_tail and chunk apply to single texts.

    Raises:
        ConfigError: ``truncation`` or ``long_documents`` other than head/truncate on text-pair data.
    """
    if pairs and (spec_like.truncation != "head" or spec_like.long_documents != "truncate"):
        name = "long_documents" if spec_like.long_documents != "truncate" else "truncation"
        raise ConfigError(f"{name}: {getattr(spec_like, name)} applies to single texts; the data in {where} has "
                          "text pairs (expected truncation head, long_documents truncate)")
