"""Structured pruning of transformer encoders: layout, gradient importance, plan and slicing.

What transformers 5.23 still offers (checked): ``transformers.pytorch_utils.prune_linear_layer`` exists and is
used here to slice ``nn.Linear`` layers. ``PreTrainedModel.prune_heads``, ``find_pruneable_heads_and_indices``
and the config's ``pruned_heads`` are gone, and BERT/ViT attention derives its head size as
``hidden_size / num_attention_heads`` with ``all_head_size == hidden_size``. So a config cannot describe an
encoder with fewer heads (uniform or not): such a model would not reload with ``from_pretrained``. What a
BERT/ViT config *can* describe is ``num_hidden_layers`` and one ``intermediate_size`` for every layer, so this
module prunes whole top layers and feed-forward neurons, the same number of neurons in every layer (each layer
keeps its own most important ones). Feed-forward weights are ~2/3 of a BERT layer's parameters.

Importance (Michel et al. 2019, with the squared-gradient/Fisher form of Kwon et al. 2022): a mask of ones
multiplies each layer's feed-forward activations; the importance of a neuron is the sum over training batches of
the squared gradient of the task loss with respect to its mask entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from transferkit.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

MEAN_POOLING_MARKER = "transferkit_mean_pooling_layer"
FFN_MULTIPLE = 32  # kept neuron counts are rounded to a multiple of 32 (GEMM-friendly shapes)


# (layer list under the base model, up projection, activation output, down projection), relative to a layer:
# BERT/RoBERTa-style encoders, and the 5.x ViT layout (``vit.layers[i].mlp.fc1/fc2``).
_LAYOUTS = (
    ("encoder.layer", "intermediate.dense", "intermediate", "output.dense"),
    ("layers", "mlp.fc1", "mlp.activation_fn", "mlp.fc2"),
)


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
    return root


@dataclass
class EncoderLayout:
    """Where the prunable parts of a transformer encoder are.

    Attributes:
        layers: The encoder's layer ``ModuleList``.
        prunable: Indices of the layers pruning may shrink or drop (not transferkit's fixed pooling layer).
        hidden_size: Model width.
        intermediate_size: Feed-forward width of every layer.
        num_heads: Attention heads per layer.
        paths: Up projection, activation (its output is masked for importance) and down projection in a layer.
    """

    layers: Any
    prunable: list[int]
    hidden_size: int
    intermediate_size: int
    num_heads: int
    paths: tuple[str, str, str] = ("intermediate.dense", "intermediate", "output.dense")

    def ffn(self, index: int) -> tuple[Any, Any, Any]:
        """``(activation module, up projection, down projection)`` of layer ``index``."""
        up, act, down = self.paths
        layer = self.layers[index]
        return _get(layer, act), _get(layer, up), _get(layer, down)

    def replace(self, index: int, path: str, module: Any) -> None:
        """Put ``module`` at ``path`` in layer ``index``."""
        parent, _, name = path.rpartition(".")
        setattr(_get(self.layers[index], parent) if parent else self.layers[index], name, module)


def encoder_layout(model: Any, where: str) -> EncoderLayout:
    """Find the encoder layers of a BERT/ViT-style model.

    Raises:
        ModelError: The model is not a transformer encoder with per-layer feed-forward ``nn.Linear`` pairs and a
            config holding ``intermediate_size`` (CNNs, decoders, other layouts).

    """
    from torch import nn

    config = getattr(model, "config", None)
    base = getattr(model, "base_model", model)
    kind = getattr(config, "model_type", None) or type(model).__name__
    for layers_path, up, act, down in _LAYOUTS:
        layers = _get(base, layers_path)
        if (config is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0
                or not isinstance(getattr(config, "intermediate_size", None), int)):
            continue
        if all(isinstance(_get(layers[0], p), nn.Linear) for p in (up, down)) and _get(layers[0], act) is not None:
            pooling = getattr(config, MEAN_POOLING_MARKER, None)
            prunable = [i for i in range(len(layers)) if pooling is None or i != int(pooling)]
            return EncoderLayout(layers, prunable, int(config.hidden_size), int(config.intermediate_size),
                                 int(config.num_attention_heads), (up, act, down))
    raise ModelError(f"{where}: model type {kind!r} cannot be pruned; structured pruning supports "
                     "transformer encoders of the BERT/ViT family (per-layer feed-forward Linear pairs)")


def layer_parameter_count(layout: EncoderLayout, index: int, ffn: int | None = None) -> int:
    """Parameters of layer ``index`` if its feed-forward width were ``ffn`` (None: as it is)."""
    total = sum(p.numel() for p in layout.layers[index].parameters())
    if ffn is None:
        return total
    h, width = layout.hidden_size, layout.intermediate_size
    return total - (2 * h + 1) * (width - ffn)


def encoder_parameter_count(layout: EncoderLayout, keep_layers: int | None = None, ffn: int | None = None) -> int:
    """Parameters of the prunable layers after keeping the bottom ``keep_layers`` at feed-forward width ``ffn``."""
    kept = layout.prunable if keep_layers is None else layout.prunable[:keep_layers]
    return sum(layer_parameter_count(layout, i, ffn) for i in kept)


@dataclass
class PrunePlan:
    """Target shapes: layers kept (bottom first), feed-forward width, heads (unchanged)."""

    keep_layers: int
    keep_ffn: int
    keep_heads: int
    encoder_parameters_before: int = 0
    encoder_parameters_after: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        """Fraction of the prunable encoder parameters kept."""
        return self.encoder_parameters_after / max(self.encoder_parameters_before, 1)


def plan_pruning(layout: EncoderLayout, *, sparsity: float | None = None, keep_layers: int | None = None,
                 keep_heads: int | None = None, keep_ffn: int | None = None) -> PrunePlan:
    """Turn the requested target into shapes this model can take.

    ``sparsity`` first narrows the feed-forward layers of all layers (down to a quarter of their width), and only
    then drops top layers: narrowing keeps depth, which fine-tuned encoders need more than width.

    Raises:
        ConfigError: A count above what the model has, a head count other than the model's, or a sparsity the
            model cannot reach.

    """
    n_layers, width, heads = len(layout.prunable), layout.intermediate_size, layout.num_heads
    if keep_layers is not None and keep_layers > n_layers:
        raise ConfigError(f"keep_layers: {keep_layers} is more than the {n_layers} encoder layers the model has")
    if keep_ffn is not None and keep_ffn > width:
        raise ConfigError(f"keep_ffn: {keep_ffn} is more than the {width} feed-forward neurons per layer")
    if keep_heads is not None:
        if keep_heads > heads:
            raise ConfigError(f"keep_heads: {keep_heads} is more than the {heads} attention heads per layer")
        if keep_heads != heads:
            raise ConfigError(f"keep_heads: {keep_heads} < {heads} cannot be saved: transformers 5.23 derives the "
                              "head size from hidden_size/num_attention_heads and dropped pruned_heads, so fewer "
                              "heads would not reload; use --keep-ffn/--keep-layers or --sparsity")
    before = encoder_parameter_count(layout)
    if sparsity is None:
        plan = PrunePlan(keep_layers or n_layers, keep_ffn or width, heads)
    else:
        plan = _plan_for_sparsity(layout, sparsity, before)
    plan.encoder_parameters_before = before
    plan.encoder_parameters_after = encoder_parameter_count(layout, plan.keep_layers, plan.keep_ffn)
    plan.notes.append("attention heads are not pruned: a BERT/ViT config cannot describe fewer heads per layer "
                      "in transformers 5.23")
    plan.notes.append("feed-forward widths are uniform across layers: the config holds one intermediate_size")
    return plan


def _plan_for_sparsity(layout: EncoderLayout, sparsity: float, before: int) -> PrunePlan:
    h, width, heads = layout.hidden_size, layout.intermediate_size, layout.num_heads
    target = (1.0 - sparsity) * before
    multiple = FFN_MULTIPLE if width >= 8 * FFN_MULTIPLE else 1  # tiny models: exact counts
    floor = max(multiple, width // 4)
    for layers in range(len(layout.prunable), 0, -1):
        fixed = encoder_parameter_count(layout, layers, 0)
        ffn = (target - fixed) / (layers * (2 * h + 1))
        ffn = int(round(ffn / multiple) * multiple)
        if ffn >= floor:
            # A sparsity always removes something, even where rounding lands on the full width.
            return PrunePlan(layers, min(ffn, width - multiple) if layers == len(layout.prunable) else min(ffn, width),
                             heads)
    raise ConfigError(f"sparsity: {sparsity} removes more than this model allows (one layer at a feed-forward "
                      f"width of {floor}); use a smaller sparsity")


def ffn_importance(model: Any, layout: EncoderLayout, batches: Any, *, progress: bool = False) -> Any:
    """Squared-gradient importance of every feed-forward neuron, ``[num_layers, intermediate_size]``.

    Args:
        model: The model (left in eval mode, parameters' ``requires_grad`` restored).
        layout: Its :func:`encoder_layout`.
        batches: Iterable of collated batches with ``labels``.
        progress: Show a progress bar.

    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    mask = torch.ones(len(layout.layers), layout.intermediate_size, requires_grad=True)
    scores = torch.zeros_like(mask, requires_grad=False)
    handles = []
    for index in range(len(layout.layers)):
        module = layout.ffn(index)[0]
        handles.append(module.register_forward_hook(lambda _m, _i, out, i=index: out * mask[i]))
    grad_state = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()  # no dropout: the score is of the model as it predicts
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for batch in tqdm(batches, desc="importance", disable=not progress):
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, mask)
            scores += grad.detach() ** 2
    finally:
        for handle in handles:
            handle.remove()
        for name, p in model.named_parameters():
            p.requires_grad_(grad_state[name])
    return scores


def apply_plan(model: Any, layout: EncoderLayout, plan: PrunePlan, importance: Any) -> None:
    """Slice the model in place to the plan's shapes and update its config.

    Feed-forward neurons are sliced with ``transformers.pytorch_utils.prune_linear_layer`` (rows of the up
    projection, columns of the down projection): exact for the neurons kept. Top prunable layers are removed;
    transferkit's fixed pooling layer (zero feed-forward weights, so any slice of it is exact) stays last.
    """
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    config = model.config
    if plan.keep_ffn < layout.intermediate_size:
        for index in range(len(layout.layers)):
            _, up, down = layout.ffn(index)
            keep = torch.topk(importance[index], plan.keep_ffn).indices.sort().values
            layout.replace(index, layout.paths[0], prune_linear_layer(up, keep, dim=0))
            layout.replace(index, layout.paths[2], prune_linear_layer(down, keep, dim=1))
        config.intermediate_size = plan.keep_ffn
    if plan.keep_layers < len(layout.prunable):
        dropped = set(layout.prunable[plan.keep_layers:])
        kept = [layer for i, layer in enumerate(layout.layers) if i not in dropped]
        pooling = getattr(config, MEAN_POOLING_MARKER, None)
        if pooling is not None:
            setattr(config, MEAN_POOLING_MARKER, int(pooling) - sum(1 for i in dropped if i < int(pooling)))
        del layout.layers[:]
        layout.layers.extend(kept)
        config.num_hidden_layers = len(kept)
        for new_index, layer in enumerate(kept):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_index
    logger.info("Pruned to %d layers x %d feed-forward neurons (%d heads): %.1f%% of encoder parameters kept",
                plan.keep_layers, plan.keep_ffn, plan.keep_heads, 100 * plan.kept_fraction)
