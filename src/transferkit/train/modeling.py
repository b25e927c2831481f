"""Model construction for the transfer strategies: pooling, freezing, layer discovery, heads.

Sentence-embedding models such as all-MiniLM-L6-v2 were trained with *mean pooling* over tokens, but
``BertForSequenceClassification`` classifies from the ``[CLS]`` position (through the pooler). Measured
on movie-sentiment with frozen MiniLM features: mean pooling 75.4% vs pooler output 67.5% (logistic
regression, 2,000 training sentences). To keep mean pooling *and* stay a plain
``AutoModelForSequenceClassification`` (so evaluate, ONNX export and Triton treat the model like any
other), :func:`add_mean_pooling_layer` appends one fixed transformer layer whose ``[CLS]`` output is the
layer-normalised masked mean of the previous layer's tokens:

* query and key weights are zero, so every attention score is 0 and softmax over the unmasked positions
  is uniform: the context vector is exactly the masked mean ``m`` (value projection = identity);
* the attention output projection is ``POOL_SCALE * R`` (``R`` orthogonal), so the post-attention
  LayerNorm sees ``POOL_SCALE * R m + h_cls``: the residual ``h_cls`` is swamped (relative error
  ``|h_cls| / (POOL_SCALE |m|)``, about 5e-4 for MiniLM) and LayerNorm, being scale invariant, returns
  ``sqrt(d) * centre(R m) / |centre(R m)|``;
* the feed-forward output is zero, so the second LayerNorm leaves that vector unchanged.

The layer is frozen and kept in eval mode (no dropout) whenever transferkit trains the model, and its
index is stored in ``config.json`` (``transferkit_mean_pooling_layer``) so a later run recognises it.
LayerNorm centring drops the component of ``R m`` along the all-ones direction; for trained heads this is
one of 384 feature directions, and the zero-shot package chooses ``R`` so that the dropped direction is
orthogonal to every label embedding (see :mod:`transferkit.train.zeroshot`).
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.errors import ModelError
from transferkit.models.catalog import ResolvedModel

logger = logging.getLogger(__name__)

MEAN_POOLING_MARKER = "transferkit_mean_pooling_layer"
# 2**12: large enough to swamp the residual, small enough that POOL_SCALE * |m_i| (|m_i| < ~2 for MiniLM)
# stays far below the fp16 maximum (65504) for half-precision exports.
POOL_SCALE = 4096.0
# Model types whose encoder layers have the BERT structure the pooling layer relies on and whose sequence
# classifier reads the first token through ``model.bert.pooler``.
MEAN_POOLING_MODEL_TYPES = ("bert",)


def pretraining_pooling(resolved: ResolvedModel) -> str:
    """How the base model pools token states into one vector when used as an embedding model.

    Returns ``"mean"`` for the catalog's mean-pooling entries and for sentence-transformers directories
    whose ``1_Pooling/config.json`` enables mean pooling, ``"mean"`` for models already carrying a
    transferkit pooling layer, else ``"cls"``.
    """
    if resolved.config.get(MEAN_POOLING_MARKER) is not None:
        return "mean"
    if resolved.entry is not None:
        return resolved.entry.pooling
    pooling_config = Path(resolved.path) / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        try:
            data = json.loads(pooling_config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "cls"
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def resolve_pooling(requested: str, resolved: ResolvedModel) -> str:
    """Turn the ``pooling`` option into ``mean`` or ``cls`` for this model.

    Raises:
        ModelError: ``mean`` was requested for an architecture the pooling layer does not support.

    """
    if resolved.config.get(MEAN_POOLING_MARKER) is not None:
        if requested == "cls":
            raise ModelError(
                f"{resolved.path}: model already pools by mean (transferkit pooling layer); --pooling cls "
                "cannot undo that"
            )
        return "mean"
    natural = pretraining_pooling(resolved)
    choice = natural if requested == "auto" else requested
    if choice == "mean" and resolved.model_type not in MEAN_POOLING_MODEL_TYPES:
        if requested == "mean":
            raise ModelError(
                f"pooling: mean pooling is implemented for model types {', '.join(MEAN_POOLING_MODEL_TYPES)}, "
                f"not {resolved.model_type!r}; use --pooling cls"
            )
        logger.warning("%s pools by mean but is a %r model: classifying from the first token instead",
                       resolved.reference, resolved.model_type)
        return "cls"
    return choice


def mean_pooling_layer_index(model: Any) -> int | None:
    """Index of the transferkit pooling layer in the encoder, or None."""
    value = getattr(model.config, MEAN_POOLING_MARKER, None)
    return None if value is None else int(value)


def add_mean_pooling_layer(model: Any, rotation: Any = None) -> int:
    """Append the fixed mean-pooling layer to a BERT sequence classifier (see module docstring).

    Args:
        model: A ``BertForSequenceClassification``.
        rotation: Optional orthogonal ``d x d`` matrix ``R`` applied to the mean (identity when None).

    Returns:
        The index of the new layer.

    """
    import torch

    if getattr(model.config, "model_type", None) not in MEAN_POOLING_MODEL_TYPES or not hasattr(model, "bert"):
        raise ModelError(f"mean pooling layer: unsupported model {type(model).__name__}")
    existing = mean_pooling_layer_index(model)
    if existing is not None:
        return existing
    encoder = model.bert.encoder
    index = len(encoder.layer)
    layer_cls = type(encoder.layer[0])
    try:
        layer = layer_cls(model.config, layer_idx=index)
    except TypeError:
        layer = layer_cls(model.config)
    reference = next(encoder.layer[0].parameters())
    layer.to(device=reference.device, dtype=reference.dtype)
    d = model.config.hidden_size
    with torch.no_grad():
        attention = layer.attention.self
        for linear in (attention.query, attention.key):
            linear.weight.zero_()
            linear.bias.zero_()
        attention.value.weight.copy_(torch.eye(d))
        attention.value.bias.zero_()
        projection = torch.eye(d) if rotation is None else rotation.to(torch.float32)
        layer.attention.output.dense.weight.copy_(POOL_SCALE * projection)
        layer.attention.output.dense.bias.zero_()
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        layer.intermediate.dense.weight.zero_()
        layer.intermediate.dense.bias.zero_()
        layer.output.dense.weight.zero_()
        layer.output.dense.bias.zero_()
    encoder.layer.append(layer)
    model.config.num_hidden_layers = index + 1
    setattr(model.config, MEAN_POOLING_MARKER, index)
    return index


def reinit_pooler(model: Any, seed: int) -> None:
    """Re-initialise ``model.bert.pooler`` (its pre-trained weights expect first-token, not mean, input)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    dense = model.bert.pooler.dense
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        weight = torch.randn(dense.weight.shape, generator=generator) * std
        dense.weight.copy_(weight.to(dense.weight.dtype))
        dense.bias.zero_()


def pin_eval(module: Any) -> None:
    """Keep ``module`` in eval mode (no dropout) even when its parent is switched to training.

    A frozen base is a fixed feature extractor: with dropout active its features would be noisy and
    differ from the cached features of the feature-extraction fast path.
    """
    import torch.nn as nn

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    module.train = types.MethodType(train, module)
    module.eval()


@dataclass(frozen=True)
class LayerLayout:
    """Where a model's transformer layers and embeddings are, for freezing and layer-wise LR decay."""

    base_prefix: str  # e.g. "bert"
    layers_prefix: str  # e.g. "bert.encoder.layer"
    num_layers: int  # pre-trained layers (the transferkit pooling layer excluded)
    pooling_layer: int | None

    def classify(self, name: str) -> tuple[str, int | None]:
        """Classify a parameter name: ``("layer", i)``, ``("embeddings", None)``, ``("top", None)``, ``("head", None)``.

        ``top`` is a base-model parameter after the layers (a final norm); ``head`` is everything that
        belongs to the task head (classifier, pooler).
        """
        if name.startswith(self.layers_prefix + "."):
            index = int(name[len(self.layers_prefix) + 1 :].split(".", 1)[0])
            return ("layer", index)
        if self.base_prefix and name.startswith(self.base_prefix + "."):
            rest = name[len(self.base_prefix) + 1 :]
            if rest.startswith("pooler."):
                return ("head", None)
            if "embed" in rest.split(".", 1)[0] or rest.startswith(("wte.", "wpe.")):
                return ("embeddings", None)
            return ("top", None)
        return ("head", None)


def _module_lists(module: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    import torch.nn as nn

    for name, child in module.named_modules(prefix=prefix):
        if isinstance(child, nn.ModuleList) and len(child) > 0:
            yield name, child


def layer_layout(model: Any) -> LayerLayout:
    """Find the transformer layer stack of a (sequence-classification) model.

    Raises:
        ModelError: No stack of identical layers was found.

    """
    base_prefix = getattr(model, "base_model_prefix", "") or ""
    if base_prefix and not hasattr(model, base_prefix):
        base_prefix = ""
    root = getattr(model, base_prefix) if base_prefix else model
    candidates = [
        (name, child) for name, child in _module_lists(root, prefix=base_prefix)
        if len({type(c) for c in child}) == 1
    ]
    if not candidates:
        raise ModelError(f"{type(model).__name__}: cannot find the transformer layers (no layer list)")
    name, stack = max(candidates, key=lambda item: len(item[1]))
    pooling = mean_pooling_layer_index(model)
    num_layers = len(stack) - (1 if pooling is not None else 0)
    return LayerLayout(base_prefix, name, num_layers, pooling)


def model_max_length(model_config: Any, tokenizer: Any) -> int:
    """The longest input the model accepts, from its position embeddings and tokenizer."""
    limits = []
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models reserve padding_idx + 1 positions.
        offset = (model_config.pad_token_id + 1) if model_config.model_type in (
            "roberta", "xlm-roberta", "camembert") and model_config.pad_token_id is not None else 0
        limits.append(int(positions) - offset)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limits.append(int(tok_limit))
    return min(limits) if limits else 512


def count_parameters(model: Any) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def freeze_for_strategy(model: Any, strategy: str, unfreeze_top_layers: int = 0) -> dict[str, Any]:
    """Set ``requires_grad`` for a strategy and pin frozen parts to eval mode.

    ``full`` and ``scratch`` train everything; ``feature_extraction`` trains the head (and the top
    ``unfreeze_top_layers`` layers). The transferkit pooling layer is always frozen.

    Returns:
        ``{"layout": LayerLayout, "trainable_layers": [...], "base_frozen": bool}``.

    Raises:
        ModelError: ``unfreeze_top_layers`` exceeds the number of layers.

    """
    layout = layer_layout(model)
    if unfreeze_top_layers > layout.num_layers:
        raise ModelError(
            f"unfreeze_top_layers: {unfreeze_top_layers} exceeds the model's {layout.num_layers} layers"
        )
    stack = model.get_submodule(layout.layers_prefix)
    if strategy == "feature_extraction":
        first_trainable = layout.num_layers - unfreeze_top_layers
        for name, parameter in model.named_parameters():
            kind, index = layout.classify(name)
            parameter.requires_grad = kind == "head" or (
                kind == "layer" and index is not None and first_trainable <= index < layout.num_layers
            )
        trainable_layers = list(range(first_trainable, layout.num_layers))
    else:
        for parameter in model.parameters():
            parameter.requires_grad = True
        trainable_layers = list(range(layout.num_layers))
    if layout.pooling_layer is not None:
        for parameter in stack[layout.pooling_layer].parameters():
            parameter.requires_grad = False
        pin_eval(stack[layout.pooling_layer])
    base = model.get_submodule(layout.base_prefix) if layout.base_prefix else model
    for index, layer in enumerate(stack):
        if index not in trainable_layers:
            pin_eval(layer)
    for name, child in base.named_children():
        if name == layout.layers_prefix.split(".")[-1] or child is stack:
            continue
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params) and not any(s is stack for s in child.modules()):
            pin_eval(child)
    base_frozen = not any(
        p.requires_grad for n, p in model.named_parameters() if layout.classify(n)[0] != "head"
    )
    return {"layout": layout, "trainable_layers": trainable_layers, "base_frozen": base_frozen}
