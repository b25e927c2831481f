"""Batched, device-agnostic inference for evaluation and forgetting checks.

Texts are tokenized once, sorted by length and batched with ``DataCollatorWithPadding`` (dynamic
padding), so a batch is only as long as its longest member; results come back in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 256
# config.json key of the read-out layer added by transferkit.train.modeling (same value as its
# MEAN_POOLING_MARKER; kept here so evaluation does not import the training package).
MEAN_POOLING_MARKER = "transferkit_mean_pooling_layer"


def pooling_layer_index(config: Any) -> int | None:
    """Index of the fixed mean-pooling layer that ``transferkit train`` appends to mean-pooling models.

    That layer is the classifier's read-out, not part of the pre-trained representation: forgetting checks
    and embeddings skip it (see :mod:`transferkit.train.modeling`).
    """
    value = getattr(config, MEAN_POOLING_MARKER, None)
    return None if value is None else int(value)


def pretrained_layer_count(config: Any) -> int:
    """Number of pre-trained transformer layers (the transferkit pooling layer excluded)."""
    index = pooling_layer_index(config)
    return index if index is not None else int(getattr(config, "num_hidden_layers", 0))


def select_device() -> Any:
    """The best available torch device (CUDA, Apple MPS, else CPU)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_max_length(tokenizer: Any, config: Any, cap: int = DEFAULT_MAX_LENGTH) -> int:
    """Longest input both the tokenizer and the position embeddings accept, capped at ``cap``."""
    limits = [cap]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits)


class _Batches:
    """Tokenized inputs sorted by length, yielded as padded batches with their original positions."""

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None,
        *,
        max_length: int,
        batch_size: int,
        features: list[dict[str, list[int]]] | None = None,
    ) -> None:
        from transformers import DataCollatorWithPadding

        if features is None:
            encoded = tokenizer(
                list(texts), list(text_pairs) if text_pairs is not None else None,
                truncation=True, max_length=max_length,
            )
            features = [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]
        self.features = features
        self.lengths = [len(f["input_ids"]) for f in self.features]
        self.order = np.argsort(self.lengths, kind="stable")
        self.batch_size = batch_size
        self.collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __len__(self) -> int:
        return (len(self.features) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Any:
        for start in range(0, len(self.features), self.batch_size):
            index = self.order[start : start + self.batch_size]
            yield index, self.collator([self.features[i] for i in index])


def _progress(total: int, desc: str, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not show, leave=False)


def predict_proba(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    device: Any = None,
    desc: str = "predict",
    progress: bool = True,
    text_inputs: Any = None,
) -> np.ndarray:
    """Class probabilities (softmax of the logits) of a sequence classifier, in input order.

    With ``text_inputs`` (:class:`transferkit.data.long_text.TextInputs`) other than head truncation, texts are
    cut (tail, head_tail) or split into windows whose logits are aggregated per text before the softmax.

    Args:
        model: A ``*ForSequenceClassification`` model.
        tokenizer: Its tokenizer.
        texts: Input texts.
        text_pairs: Second texts for pair tasks, or None.
        batch_size: Examples per forward pass.
        max_length: Truncation length in tokens.
        device: Torch device (default: :func:`select_device`).
        desc: Progress-bar label.
        progress: Show a tqdm progress bar.
        text_inputs: How long texts are cut or windowed (None: head truncation at ``max_length``).

    Returns:
        Array of shape (len(texts), num_labels), float64.

    """
    import torch

    device = device or select_device()
    model.to(device).eval()
    if text_inputs is not None and not text_inputs.plain:
        from transferkit.data.long_text import aggregate, encode_documents

        features, doc_index = encode_documents(tokenizer, texts, text_inputs)
        batches = _Batches(tokenizer, texts, None, max_length=text_inputs.max_length, batch_size=batch_size,
                           features=features)
        logits = aggregate(_logits(model, batches, device, desc, progress), doc_index, len(texts),
                           text_inputs.aggregation)
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    batches = _Batches(tokenizer, texts, text_pairs, max_length=max_length, batch_size=batch_size)
    out = np.zeros((len(texts), int(model.config.num_labels)), dtype=np.float64)
    with torch.inference_mode(), _progress(len(batches), desc, progress) as bar:
        for index, batch in batches:
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out[index] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
            bar.update(1)
    return out


def _logits(model: Any, batches: _Batches, device: Any, desc: str, progress: bool) -> np.ndarray:
    """Raw logits of every feature of ``batches``, in feature order (float64)."""
    import torch

    out = np.zeros((len(batches.features), int(model.config.num_labels)), dtype=np.float64)
    with torch.inference_mode(), _progress(len(batches), desc, progress) as bar:
        for index, batch in batches:
            out[index] = model(**{k: v.to(device) for k, v in batch.items()}).logits.double().cpu().numpy()
            bar.update(1)
    return out


def _mean_pool(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def encode(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    all_layers: bool = False,
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    device: Any = None,
    desc: str = "embed",
    progress: bool = True,
) -> Any:
    """Sentence embeddings from an encoder (or the encoder inside a classifier), in input order.

    Args:
        model: ``AutoModel`` encoder or a ``*ForSequenceClassification`` (its ``base_model`` is used).
        tokenizer: Tokenizer.
        texts: Input texts.
        pooling: ``mean`` (mask-weighted mean of the last hidden state, sentence-transformers style),
            ``cls`` (first token) or ``pooler`` (the model's pooler output, what a BERT head consumes).
        all_layers: Return mean-pooled embeddings of every hidden layer (list, embeddings layer first)
            instead of one array; used for per-layer drift. A transferkit mean-pooling read-out layer is
            never included, and ``mean`` pooling reads the last pre-trained layer below it.
        batch_size: Examples per forward pass.
        max_length: Truncation length in tokens.
        device: Torch device.
        desc: Progress-bar label.
        progress: Show a tqdm progress bar.

    Returns:
        Array (n, hidden) float32, or a list of such arrays when ``all_layers``.

    """
    import torch

    if pooling not in ("mean", "cls", "pooler"):
        raise ValueError(f"pooling must be mean, cls or pooler, got {pooling!r}")
    device = device or select_device()
    encoder = getattr(model, "base_model", model)
    encoder.to(device).eval()
    readout = pooling_layer_index(encoder.config)
    need_hidden = all_layers or (pooling == "mean" and readout is not None)
    batches = _Batches(tokenizer, texts, None, max_length=max_length, batch_size=batch_size)
    chunks: list[tuple[np.ndarray, Any]] = []
    with torch.inference_mode(), _progress(len(batches), desc, progress) as bar:
        for index, batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            output = encoder(**batch, output_hidden_states=need_hidden)
            mask = batch["attention_mask"]
            # hidden_states[i] is the output of layer i-1 (0 = embeddings); drop the read-out layer.
            hidden = output.hidden_states[: readout + 1] if need_hidden and readout is not None else (
                output.hidden_states if need_hidden else None)
            if all_layers:
                pooled = [_mean_pool(h, mask).float().cpu().numpy() for h in hidden]
            elif pooling == "mean":
                last = hidden[-1] if hidden is not None else output.last_hidden_state
                pooled = _mean_pool(last, mask).float().cpu().numpy()
            elif pooling == "cls":
                pooled = output.last_hidden_state[:, 0].float().cpu().numpy()
            else:
                if getattr(output, "pooler_output", None) is None:
                    raise ValueError("the encoder has no pooler output")
                pooled = output.pooler_output.float().cpu().numpy()
            chunks.append((index, pooled))
            bar.update(1)
    n = len(texts)

    def assemble(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        dim = parts[0][1].shape[1] if parts else 0
        out = np.zeros((n, dim), dtype=np.float32)
        for index, values in parts:
            out[index] = values
        return out

    if all_layers:
        n_layers = len(chunks[0][1]) if chunks else 0
        return [assemble([(i, layers[j]) for i, layers in chunks]) for j in range(n_layers)]
    return assemble(chunks)


def truncated_count(tokenizer: Any, texts: Sequence[str], max_length: int) -> int:
    """How many texts are longer than ``max_length`` tokens (and therefore truncated)."""
    lengths = tokenizer(list(texts), truncation=False)["input_ids"]
    return sum(1 for ids in lengths if len(ids) > max_length)
