"""A Hugging Face ``Trainer`` with what transfer learning needs on top of it.

The hooks overridden: ``create_optimizer`` (layer-wise LR decay and a separate head LR), ``compute_loss``
(class weights, the L2-SP penalty, per-document loss of chunked documents), ``_get_train_sampler`` (length
grouping whose order depends only on seed and epoch, so resumed runs are exact) and the signature columns
(document batches). Everything else (loop, schedules, mixed precision, checkpointing, DDP, early stopping)
is the stock Trainer.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import Trainer

from transferkit.train.data import SeededLengthGroupedSampler
from transferkit.train.optim import Classifier, L2SPPenalty, build_param_groups

logger = logging.getLogger(__name__)


class TransferTrainer(Trainer):
    """``Trainer`` with LR groups, class-weighted loss, L2-SP and seeded length grouping.

    Args:
        *args: Passed to :class:`transformers.Trainer`.
        classify: Parameter-name classifier of the model's layout (None: every parameter is head).
        num_layers: Number of pre-trained layers (for LR decay depths).
        head_learning_rate: LR of the head parameters (``args.learning_rate`` is the top layer's LR).
        llrd: Layer-wise LR decay factor.
        class_weights: Per-label loss weights, or None.
        l2sp: An :class:`L2SPPenalty`, or None.
        train_lengths: Token lengths of the training examples; enables length-grouped batches.
        model_computes_loss: Use the loss the model returns for the batch's ``labels`` (causal LM) instead of
            cross-entropy on the logits.
        document_aggregation: Training batches of whole documents (``doc_ids`` per window, ``labels`` per
            document): reduce the windows' logits per document (``mean`` / ``max``) before the loss.
        **kwargs: Passed to :class:`transformers.Trainer`.

    """

    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        classify: Classifier | None = None,
        num_layers: int = 0,
        head_learning_rate: float | None = None,
        llrd: float = 1.0,
        class_weights: list[float] | None = None,
        l2sp: L2SPPenalty | None = None,
        train_lengths: list[int] | None = None,
        model_computes_loss: bool = False,
        document_aggregation: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.classify = classify
        self.num_layers = num_layers
        self.head_learning_rate = head_learning_rate
        self.llrd = llrd
        self.class_weights = class_weights
        self.l2sp = l2sp
        self.train_lengths = train_lengths
        self.model_computes_loss = model_computes_loss
        self.document_aggregation = document_aggregation
        self._last_penalty: float | None = None
        self._weight_tensor: Any = None

    def create_optimizer(self, model: Any = None) -> Any:
        """Build the optimizer from LR-decayed parameter groups (same optimizer class as the Trainer's)."""
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            groups = build_param_groups(
                opt_model.named_parameters(),
                self.classify,
                self.num_layers,
                learning_rate=self.args.learning_rate,
                head_learning_rate=self.head_learning_rate or self.args.learning_rate,
                llrd=self.llrd,
                weight_decay=self.args.weight_decay,
                decay_names=set(self.get_decay_parameter_names(opt_model)),
                shared_weight_decay=0.0 if self.l2sp is not None else None,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            for group in groups:
                group.pop("names")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Cross-entropy (optionally class-weighted), or the model's own loss, plus the L2-SP penalty while training."""
        import torch
        import torch.nn.functional as F

        if self.model_computes_loss:
            outputs = model(**inputs)
            loss = outputs["loss"]
        else:
            labels = inputs.pop("labels")
            doc_ids = inputs.pop("doc_ids", None)
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            if doc_ids is not None:
                from transferkit.data.long_text import aggregate_tensor

                logits = aggregate_tensor(logits, doc_ids, labels.shape[0], self.document_aggregation)
            weight = None
            if self.class_weights is not None:
                if self._weight_tensor is None or self._weight_tensor.device != logits.device:
                    self._weight_tensor = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
                weight = self._weight_tensor
            loss = F.cross_entropy(logits.float(), labels, weight=weight)
        if self.l2sp is not None and model.training:
            penalty = self.l2sp(self.accelerator.unwrap_model(model))
            self._last_penalty = float(penalty.detach())
            loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        # Batches of whole documents arrive as {"windows": [...], "labels": ...}: keep the key the forward
        # signature does not name (the collator flattens it).
        super()._set_signature_columns_if_needed()
        if self.document_aggregation is not None and "windows" not in self._signature_columns:
            self._signature_columns.append("windows")

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.train_lengths is not None:
            return SeededLengthGroupedSampler(
                self.train_lengths,
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                seed=self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the latest L2-SP penalty to training logs."""
        if self._last_penalty is not None and "loss" in logs:
            logs["l2sp_penalty"] = self._last_penalty
        super().log(logs, start_time)


class Reordered:
    """A view of a dataset in another order (evaluation sorted by length)."""

    def __init__(self, dataset: Any, order: list[int]) -> None:
        self.dataset = dataset
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.order[index]]


def describe_groups(optimizer: Any) -> list[dict[str, Any]]:
    """LR, depth, weight decay and tensor count of each optimizer parameter group (for the summary)."""
    if optimizer is None:
        return []
    groups = getattr(optimizer, "param_groups", [])
    return [
        {"group": g.get("group"), "depth": g.get("depth"), "lr": g.get("initial_lr", g.get("lr")),
         "weight_decay": g.get("weight_decay"), "tensors": len(g["params"])}
        for g in groups
    ]
