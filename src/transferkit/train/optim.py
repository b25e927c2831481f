"""Optimizer parameter groups (layer-wise LR decay, head LR) and the L2-SP penalty.

Hand-written because the Hugging Face Trainer has neither: its default optimizer puts every parameter
in one LR group (split only by weight decay), and it has no regulariser towards pre-trained weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

Classifier = Callable[[str], tuple[str, int | None]]


def parameter_depth(kind: str, index: int | None, num_layers: int) -> int | None:
    """Depth from the top of the encoder: top layer 0, ..., bottom layer L-1, embeddings L; head None."""
    if kind == "head":
        return None
    if kind == "layer":
        assert index is not None
        return num_layers - 1 - index
    if kind == "embeddings":
        return num_layers
    return 0  # "top": parameters after the last layer (final norms)


def build_param_groups(
    named_parameters: Iterable[tuple[str, Any]],
    classify: Classifier | None,
    num_layers: int,
    *,
    learning_rate: float,
    head_learning_rate: float,
    llrd: float,
    weight_decay: float,
    decay_names: set[str],
    shared_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Group trainable parameters by (depth, weight decay) with LR ``learning_rate * llrd**depth``.

    Args:
        named_parameters: ``model.named_parameters()``; frozen ones are skipped.
        classify: Maps a name to ``(kind, layer index)`` (:meth:`LayerLayout.classify`); None puts every
            parameter in the head (a bare head trained on cached features).
        num_layers: Number of pre-trained layers.
        learning_rate: LR of the top layer.
        head_learning_rate: LR of the head.
        llrd: Decay factor per layer (1 = no decay).
        weight_decay: Weight decay of parameters in ``decay_names``.
        decay_names: Names that get weight decay (the Trainer excludes biases and norms).
        shared_weight_decay: Weight decay for pre-trained (non-head) parameters when it must differ, e.g. 0
            under L2-SP, which replaces decay towards zero by decay towards the pre-trained values.

    Returns:
        Param-group dicts with ``params``, ``lr``, ``weight_decay`` and the metadata keys ``group``
        (``head``, ``layer.<i>``, ``embeddings``, ``top``) and ``depth``.

    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        kind, index = classify(name) if classify is not None else ("head", None)
        depth = parameter_depth(kind, index, num_layers)
        label = f"layer.{index}" if kind == "layer" else kind
        decays = name in decay_names
        key = (label, decays)
        if key not in groups:
            if depth is None:
                lr = head_learning_rate
                decay = weight_decay if decays else 0.0
            else:
                lr = learning_rate * (llrd**depth)
                base_decay = weight_decay if shared_weight_decay is None else shared_weight_decay
                decay = base_decay if decays else 0.0
            groups[key] = {"params": [], "names": [], "lr": lr, "weight_decay": decay, "group": label,
                           "depth": depth}
        groups[key]["params"].append(parameter)
        groups[key]["names"].append(name)
    # Top layer first (the Trainer logs the first group's LR), the head last.
    ordered = sorted(groups.values(), key=lambda g: (1 << 30 if g["depth"] is None else g["depth"], g["group"]))
    return ordered


class L2SPPenalty:
    """``alpha / 2 * sum ||w - w0||^2`` over the pre-trained parameters that are being trained.

    L2-SP (Li, Grandvalet & Davoine, 2018) regularises towards the starting point instead of towards
    zero, which limits how far fine-tuning drifts from what the base model knew (catastrophic
    forgetting). The reference copy ``w0`` is taken when the penalty is built, i.e. from the
    pre-trained weights before any checkpoint is loaded.
    """

    def __init__(self, model: Any, alpha: float, classify: Classifier) -> None:
        self.alpha = float(alpha)
        self.names: list[str] = []
        self.reference: dict[str, Any] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and classify(name)[0] != "head":
                self.names.append(name)
                self.reference[name] = parameter.detach().clone()

    def __call__(self, model: Any) -> Any:
        """Return the penalty as a scalar tensor (differentiable w.r.t. the model's parameters)."""
        import torch

        params = dict(model.named_parameters())
        total = None
        for name in self.names:
            parameter = params[name]
            reference = self.reference[name]
            if reference.device != parameter.device:
                reference = self.reference[name] = reference.to(parameter.device)
            term = torch.sum((parameter - reference.to(parameter.dtype)) ** 2)
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=next(model.parameters()).device)
        return 0.5 * self.alpha * total
