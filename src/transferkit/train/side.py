"""The task side of a fine-tune run, and the helpers every side shares.

The training recipe (:mod:`transferkit.train.run`) is the same for every task: hyperparameters, the
Trainer, checkpointing and resume, early stopping, LR groups, L2-SP, DDP and the outputs. What differs per
task sits behind :class:`TrainingSide`, which a task returns from ``Task.training(...)``
(:mod:`transferkit.tasks`): reading the splits, building and freezing the model, datasets and collator,
the cached-feature path, the off-the-shelf model, validation of a saved model, and saving.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError
from transferkit.train.config import (
    DEFAULT_FEATURE_EXTRACTION_HEAD_LR,
    DEFAULT_FROZEN_EPOCHS,
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_LORA_LEARNING_RATE,
    TrainConfig,
)


class TrainingSide(ABC):
    """What one task contributes to a fine-tune run.

    Attributes:
        hp: Resolved hyperparameters (:func:`resolve_hyperparameters` plus task entries such as ``image_size``).
        train_split: The training split (``.labels`` holds the label ids).
        validation_split: The validation split.
        pooling: Pooling recorded in the summary (text resolves it when training starts).
        processing_class: What the Trainer saves beside checkpoints (a tokenizer) or None.
        preprocessing: Input preprocessing recorded in ``training_summary.json``, or None.
        model_computes_loss: The model returns its own loss from the batch's ``labels`` (a causal LM with
            masked prompt tokens); otherwise the recipe's (class-weighted) cross-entropy on the logits.
        lora_trains_head: Strategy ``lora`` also trains the parameters the layer layout calls ``head`` (a new
            classification head); False for a pre-trained output layer (a language model's LM head) that stays
            frozen like the rest of the base.
        lora_task_type: peft ``task_type`` written to the saved adapter's config (``CAUSAL_LM``), or None.
    """

    hp: dict[str, Any]
    train_split: Any
    validation_split: Any
    pooling: str = "model"
    processing_class: Any = None
    preprocessing: dict[str, Any] | None = None
    model_computes_loss: bool = False
    lora_trains_head: bool = True
    lora_task_type: str | None = None

    def selection_metric(self, config: Any) -> str:
        """The validation metric that selects the best checkpoint (``--metric`` for classification)."""
        return config.metric

    def trainer_metrics(self) -> Any:
        """The Trainer's ``compute_metrics`` (accuracy and macro F1 of logits); None evaluates the loss only."""
        return compute_metrics

    def document_aggregation(self) -> str | None:
        """The per-document reduction of window logits when training batches hold whole documents.

        None (the default): every training example is scored on its own.
        """
        return None

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Validation metrics completed from the Trainer's (e.g. perplexity from the loss); unchanged by default."""
        return metrics

    def document_metrics(self, eval_dataset: Any, predictions: Any, metrics: dict[str, float]) -> dict[str, float]:
        """The selected model's validation metrics per input; unchanged by default.

        Text sides with chunked documents aggregate the windows' predictions (given in ``eval_dataset`` order).
        """
        return metrics

    def quantization_aware(self, model: Any, mode: str) -> Any:
        """Make the model train against the weights its quantized export holds; return a handle with ``remove()``.

        Raises:
            ConfigError: This task's export has no such graph (the default: classification exports int8 by
                post-training quantization).
        """
        raise ConfigError(f"quantization_aware: {mode} emulates the int4 graph of generative exports; this task's "
                          "export quantizes to int8 after training (use --quantization-aware none)")

    def start_training(self, ctx: Any) -> None:  # noqa: B027 - optional hook
        """Settle what training (not off_the_shelf) needs before the model is built."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Task entries of the run identity that guards resuming (a changed entry refuses the checkpoints)."""

    @abstractmethod
    def build_model(self, ctx: Any) -> Any:
        """The seeded model to train: pre-trained with a new head, or randomly initialised for ``scratch``."""

    @abstractmethod
    def freeze(self, model: Any, strategy: str, unfreeze_top_layers: int) -> dict[str, Any]:
        """Freeze for the strategy; return ``layout``, ``base_frozen`` and ``trainable_layers``."""

    @abstractmethod
    def datasets(self, ctx: Any) -> tuple[Any, Any]:
        """Training and validation datasets (``.augment`` names the training augmentation)."""

    @abstractmethod
    def supports_feature_cache(self, model: Any) -> bool:
        """Whether a frozen base can be replaced by cached head inputs."""

    @abstractmethod
    def cached_features(self, model: Any, ctx: Any, datasets: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
        """Head inputs of every split (from the cache or computed once), the cache path and whether it hit."""

    @abstractmethod
    def head_model(self, model: Any) -> Any:
        """The trainable head alone, fed with cached features."""

    @abstractmethod
    def collator(self, device: str) -> Any:
        """The data collator of the training and validation datasets."""

    def eval_order(self, eval_ds: Any) -> list[int]:
        """Order of the validation rows (sorting by length saves padding; metrics do not change)."""
        return list(range(len(eval_ds)))

    def train_lengths(self, train_ds: Any) -> list[int] | None:
        """Lengths for ``group_by_length`` sampling, or None when the task has no lengths."""
        return None

    def static_graph(self, resolved: Any, use_cache: bool) -> bool:
        """Whether every trainable parameter is used in each forward (DDP skips its unused-parameter search)."""
        return True

    @abstractmethod
    def off_the_shelf(self, ctx: Any) -> tuple[Any, dict[str, Any]]:
        """The packaged model of strategy ``off_the_shelf`` and what the summary records about it.

        Returns:
            The model in eval mode and ``{"mode": ..., "zero_shot": ..., "resolved": {...}}``.

        Raises:
            ModelError: The model has no head for the labels and no other way to classify them.
        """

    @abstractmethod
    def validation_metrics(self, ctx: Any, model_dir: Path, model: Any = None) -> dict[str, float]:
        """Validation metrics (``accuracy``, ``f1_macro``, ``loss``) of a saved model (or its loaded ``model``)."""

    @abstractmethod
    def save(self, directory: Path, model: Any, labels: list[str]) -> None:
        """Write the model directory's weights, config, input-processing files and ``labels.json``."""


def dist_info() -> tuple[int, int]:
    """(world size, global rank) from the torchrun environment."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def interactive() -> bool:
    """Whether progress bars are worth drawing (stderr is a terminal)."""
    return sys.stderr.isatty()


def resolve_hyperparameters(config: TrainConfig, entry: Any, model_limit: int,
                            auto_length: int | None = None) -> dict[str, Any]:
    """Fill unset options from the catalog entry, then built-in defaults; check ``max_length``.

    ``auto_length`` (text classification: measured on the training split) replaces an unset or ``auto``
    ``max_length``; without it those take the catalog's value.

    Raises:
        ConfigError: ``max_length`` exceeds the model's limit.

    """
    defaults = dict(DEFAULT_HYPERPARAMETERS)
    if entry is not None:
        defaults.update(entry.hyperparameters)

    def pick(name: str, key: str | None = None) -> Any:
        value = getattr(config, name)
        return value if value is not None else defaults.get(key or name)

    learning_rate = float(pick("learning_rate"))
    if config.strategy == "lora" and config.learning_rate is None:
        # Low-rank adapters start at zero and need a much larger step size than full fine-tuning.
        learning_rate = float(defaults.get("lora_learning_rate", DEFAULT_LORA_LEARNING_RATE))
    head_default = defaults.get("head_learning_rate")
    if head_default is None:
        head_default = DEFAULT_FEATURE_EXTRACTION_HEAD_LR if config.strategy == "feature_extraction" else learning_rate
    head_learning_rate = float(config.head_learning_rate or head_default)
    requested = config.max_length if isinstance(config.max_length, int) else None
    if requested is not None and requested > model_limit:
        raise ConfigError(f"max_length: {requested} exceeds the model's limit of {model_limit} tokens")
    if requested is None and auto_length is not None:
        requested = auto_length
    max_length = int(requested or min(int(defaults["max_length"]), model_limit))
    batch_size = int(pick("batch_size"))
    epochs = float(pick("epochs"))
    if config.epochs is None and config.strategy == "feature_extraction" and not config.unfreeze_top_layers:
        epochs = DEFAULT_FROZEN_EPOCHS
    return {
        "learning_rate": learning_rate,
        "head_learning_rate": head_learning_rate,
        "llrd": config.llrd,
        "weight_decay": float(pick("weight_decay")),
        "warmup_ratio": float(pick("warmup_ratio")),
        "scheduler": str(pick("scheduler")),
        "epochs": epochs,
        "max_steps": config.max_steps,
        "batch_size": batch_size,
        "eval_batch_size": int(config.eval_batch_size or 2 * batch_size),
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": max_length,
        "model_max_length": model_limit,
    }


def resolve_precision(requested: str) -> tuple[str, str]:
    """Return (device, precision) for the request: auto = bf16, else fp16, on CUDA; fp32 on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if requested == "auto":
        if not cuda:
            return device, "fp32"
        return device, "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and not cuda:
        raise ConfigError("precision: fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    return device, requested


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy and macro F1 of logits (the Trainer's ``compute_metrics``)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def probability_metrics(probs: Any, labels: Any) -> dict[str, float]:
    """Accuracy, macro F1 and mean cross-entropy of class probabilities against label ids."""
    import numpy as np
    from transformers import EvalPrediction

    labels = np.asarray(labels)
    metrics = compute_metrics(EvalPrediction(predictions=np.log(np.clip(probs, 1e-12, 1.0)), label_ids=labels))
    metrics["loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))
    return metrics
