"""Off-the-shelf models: reuse a matching head as is, or package zero-shot classification as a classifier.

Zero-shot classification with a mean-pooling sentence-embedding model scores a text by the cosine
similarity between its embedding and the embedding of each label name (or description). It is packaged
as a plain ``BertForSequenceClassification`` so evaluate, ONNX export and Triton treat it like any
fine-tuned model:

* :func:`~transferkit.train.modeling.add_mean_pooling_layer` makes the first-token state of an extra
  fixed layer equal to ``sqrt(d) * centre(R m) / |centre(R m)|`` for the masked token mean ``m``;
* ``R`` is the Householder reflection that maps a unit vector ``v`` onto the all-ones direction, where
  ``v`` is orthogonal to every label embedding and is the direction of least variance of sample text
  embeddings; centring then removes exactly ``m``'s component along ``v``, which leaves every dot product
  with a label embedding unchanged;
* the pooler is ``tanh(eps * x)`` with ``eps = 2**-8`` (tanh is linear to 1e-4 there) and the classifier
  rows are ``R e_k / (temperature * eps * sqrt(d))``.

The logits are therefore ``cos'(m, e_k) / temperature`` where ``cos'`` divides by ``|m - (m.v) v|``
instead of ``|m|``: the predicted label is exactly the cosine argmax (same numerator, one shared
denominator per text) and the probabilities are those of a temperature lowered by the factor
``|m - (m.v) v| / |m|`` (measured, with the deviation from exact cosine logits, in the training summary).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, ModelError
from transferkit.models.catalog import ResolvedModel
from transferkit.train.modeling import MEAN_POOLING_MODEL_TYPES, add_mean_pooling_layer, pretraining_pooling

logger = logging.getLogger(__name__)

POOLER_EPS = 2.0**-8


def load_label_descriptions(path: Path | None, labels: list[str]) -> dict[str, str]:
    """Read ``{"label": "description"}`` JSON; labels without a description use their name.

    Raises:
        ConfigError: Unreadable file, not an object of strings, or unknown label names.

    """
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"label_descriptions: {path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"label_descriptions: {path}: expected a JSON object mapping label name to text")
    unknown = sorted(set(data) - set(labels))
    if unknown:
        raise ConfigError(
            f"label_descriptions: {path}: unknown labels {unknown}; labels.json has {labels}"
        )
    return data


def head_permutation(head_labels: list[str], labels: list[str]) -> list[int] | None:
    """Row order that maps a model head's labels onto the dataset's labels, or None if the sets differ.

    Names are compared case-insensitively.
    """
    if len(head_labels) != len(labels):
        return None
    index = {name.lower(): i for i, name in enumerate(head_labels)}
    if len(index) != len(head_labels):
        return None
    try:
        return [index[name.lower()] for name in labels]
    except KeyError:
        return None


def reorder_head(model: Any, permutation: list[int], labels: list[str]) -> None:
    """Permute the output rows of the final classification layer and set the label maps."""
    import torch
    import torch.nn as nn

    num = len(labels)
    final = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num and not name.startswith(
            getattr(model, "base_model_prefix", "\0") + "."
        ):
            final = module
    if final is None:
        raise ModelError(f"{type(model).__name__}: cannot find the final classification layer to reorder")
    if permutation != list(range(num)):
        index = torch.tensor(permutation)
        with torch.no_grad():
            final.weight.copy_(final.weight[index].clone())
            if final.bias is not None:
                final.bias.copy_(final.bias[index].clone())
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}


def _mean_embeddings(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> Any:
    """Masked-mean token embeddings of the base (pooling layer not yet added), float32 on CPU."""
    import torch

    base = model.bert
    device = next(base.parameters()).device
    chunks = []
    base.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            states = base(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            chunks.append(((states * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu())
    return torch.cat(chunks)


def _least_variance_direction(label_embeddings: Any, samples: Any) -> Any:
    """Unit vector orthogonal to every label embedding with the least second moment over ``samples``."""
    import torch

    d = label_embeddings.shape[1]
    q, _ = torch.linalg.qr(label_embeddings.T.double(), mode="complete")  # first K columns span the labels
    complement = q[:, label_embeddings.shape[0] :]  # d x (d - K), orthonormal
    projected = samples.double() @ complement
    second_moment = projected.T @ projected
    _, vectors = torch.linalg.eigh(second_moment)
    v = complement @ vectors[:, 0]
    v = v / v.norm()
    if d < 2:  # pragma: no cover - degenerate hidden size
        raise ModelError("zero-shot: hidden size too small")
    return v.float()


def householder_to_ones(v: Any) -> Any:
    """Orthogonal symmetric ``H`` with ``H v = 1/sqrt(d)`` (all-ones direction)."""
    import torch

    d = v.shape[0]
    ones = torch.full((d,), 1.0 / math.sqrt(d), dtype=torch.float64)
    diff = v.double() - ones
    if diff.norm() < 1e-12:
        return torch.eye(d)
    w = diff / diff.norm()
    return (torch.eye(d, dtype=torch.float64) - 2.0 * torch.outer(w, w)).float()


def build_zero_shot_classifier(
    resolved: ResolvedModel,
    tokenizer: Any,
    labels: list[str],
    *,
    descriptions: dict[str, str],
    temperature: float,
    sample_texts: list[str],
    check_texts: list[str],
    max_length: int,
) -> tuple[Any, dict[str, Any]]:
    """Package an embedding model as a zero-shot ``BertForSequenceClassification`` (see module docstring).

    Args:
        resolved: The embedding model.
        tokenizer: Its tokenizer.
        labels: Label names (id order).
        descriptions: Optional text per label embedded instead of the name.
        temperature: Logits are cosine / temperature.
        sample_texts: Texts used to choose the direction dropped by LayerNorm centring (no labels used).
        check_texts: Texts on which the packaged logits are compared with exact cosine logits.
        max_length: Truncation length.

    Returns:
        ``(model, info)``; ``info`` records label texts and the measured deviation from exact cosine.

    Raises:
        ModelError: The model is not a mean-pooling BERT-family embedding model.

    """
    import torch

    from transferkit.models.loading import load_sequence_classifier

    if resolved.model_type not in MEAN_POOLING_MODEL_TYPES or pretraining_pooling(resolved) != "mean":
        raise ModelError(
            f"{resolved.reference}: zero-shot off_the_shelf needs a mean-pooling sentence-embedding model of type "
            f"{'/'.join(MEAN_POOLING_MODEL_TYPES)} (this is {resolved.model_type!r}, pooling "
            f"{pretraining_pooling(resolved)!r})"
        )
    model = load_sequence_classifier(resolved, labels)
    model.eval()
    label_texts = [descriptions.get(name, name) for name in labels]
    label_embeddings = torch.nn.functional.normalize(_mean_embeddings(model, tokenizer, label_texts, max_length), dim=1)
    samples = _mean_embeddings(model, tokenizer, sample_texts, max_length) if sample_texts else None
    d = model.config.hidden_size
    if samples is not None and len(samples) > 0:
        v = _least_variance_direction(label_embeddings, samples)
    else:
        noise = torch.randn(4 * d, d, generator=torch.Generator().manual_seed(0))
        v = _least_variance_direction(label_embeddings, noise)
    rotation = householder_to_ones(v)
    add_mean_pooling_layer(model, rotation=rotation)
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(POOLER_EPS * torch.eye(d))
        model.bert.pooler.dense.bias.zero_()
        scale = 1.0 / (temperature * POOLER_EPS * math.sqrt(d))
        model.classifier.weight.copy_(scale * (label_embeddings @ rotation))
        model.classifier.bias.zero_()
    model.config.transferkit_zero_shot = {
        "label_texts": dict(zip(labels, label_texts, strict=True)),
        "temperature": temperature,
    }
    model.eval()
    info: dict[str, Any] = {"label_texts": dict(zip(labels, label_texts, strict=True)), "temperature": temperature,
                            "sample_texts": len(sample_texts)}
    if check_texts:
        info.update(_check_against_cosine(model, tokenizer, check_texts, label_embeddings, temperature, max_length))
        if info["argmax_agreement"] < 1.0:
            logger.warning("zero-shot package disagrees with exact cosine on %.2f%% of check texts",
                           100 * (1 - info["argmax_agreement"]))
    return model, info


def _check_against_cosine(
    model: Any, tokenizer: Any, texts: list[str], label_embeddings: Any, temperature: float, max_length: int
) -> dict[str, Any]:
    """Compare packaged logits with exact mean-pooled cosine logits on ``texts``."""
    import torch

    device = next(model.parameters()).device
    exact_parts, packaged_parts = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            outputs = model.bert(**batch, output_hidden_states=True)
            states = outputs.hidden_states[-2].float()  # before the pooling layer
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (states * mask).sum(1) / mask.sum(1)
            exact_parts.append(torch.nn.functional.normalize(mean, dim=1).cpu() @ label_embeddings.T / temperature)
            packaged_parts.append(model(**batch).logits.float().cpu())
    exact = torch.cat(exact_parts)
    packaged = torch.cat(packaged_parts)
    centred_exact = exact - exact.mean(dim=1, keepdim=True)
    centred_packaged = packaged - packaged.mean(dim=1, keepdim=True)
    return {
        "check_texts": len(texts),
        "argmax_agreement": float((exact.argmax(1) == packaged.argmax(1)).float().mean()),
        "max_abs_logit_deviation": float((exact - packaged).abs().max()),
        "max_abs_logit_margin_deviation": float((centred_exact - centred_packaged).abs().max()),
    }
