"""The fine-tune step's configuration: one dataclass, validated on construction.

``TrainConfig`` holds what the user asked for; values left as ``None`` are resolved later from the
model's catalog entry (``entry.hyperparameters``) or built-in defaults by :func:`resolve_hyperparameters`,
and the resolved values are recorded in ``training_summary.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError

STRATEGIES = ("full", "feature_extraction", "scratch", "off_the_shelf")
SCHEDULERS = ("linear", "cosine", "constant")
METRICS = ("accuracy", "f1_macro", "loss")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
AUGMENTATIONS = ("none", "word_dropout", "token_mask", "image", "image_no_flip")
POOLINGS = ("auto", "cls", "mean")

# Used when neither the user nor the model's catalog entry gives a value.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "batch_size": 32,
    "epochs": 3.0,
    "warmup_ratio": 0.06,
    "weight_decay": 0.01,
    "scheduler": "linear",
    "max_length": 128,
}
# The head of a frozen base is a small freshly initialised layer: it needs a much larger step size.
DEFAULT_FEATURE_EXTRACTION_HEAD_LR = 1e-3
# Epochs of a head on cached features cost almost nothing; on movie-sentiment 10 epochs gave +1.5 points of
# validation accuracy over 3 (78.7% -> 80.2%).
DEFAULT_FROZEN_EPOCHS = 10.0


def _positive(name: str, value: float | int | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ConfigError(f"{name}: a value is required")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; expected one of {', '.join(choices)}")


def parse_class_weights(spec: str) -> str | list[float]:
    """Parse ``none``, ``balanced`` or a comma-separated list of positive floats (one per label id).

    Raises:
        ConfigError: The list has a non-numeric or non-positive entry.

    """
    text = spec.strip().lower()
    if text in ("none", "balanced"):
        return text
    weights: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"class_weights: expected 'none', 'balanced' or comma-separated numbers, got {spec!r}"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"class_weights: weights must be positive, got {part.strip()!r}")
        weights.append(value)
    return weights


@dataclass
class TrainConfig:
    """Everything the fine-tune step needs; validated in ``__post_init__`` (``ConfigError`` names the field).

    Attributes:
        data_dir: Prepared dataset directory (see :mod:`transferkit.data.prepared`).
        model: Catalog name (``minilm-l6``), local model directory or hub id.
        strategy: ``full``, ``feature_extraction``, ``scratch`` or ``off_the_shelf``.
        out_dir: Model directory to write (atomically: absent or complete).
        learning_rate: Base learning rate of the pre-trained weights (None: catalog default or 5e-5).
        head_learning_rate: Learning rate of the new head (None: catalog default; feature extraction 1e-3).
        llrd: Layer-wise LR decay factor in (0, 1]; layer at depth d from the top gets ``lr * llrd**d``.
        weight_decay: AdamW weight decay (None: catalog default or 0.01).
        warmup_ratio: Fraction of optimizer steps with linear warmup, in [0, 1).
        scheduler: ``linear``, ``cosine`` or ``constant`` (after warmup).
        epochs: Number of epochs, ignored when ``max_steps`` is set (None: catalog default or 3; 10 for
            feature extraction with a fully frozen base, whose epochs run on cached features).
        max_steps: Number of optimizer steps; overrides ``epochs``.
        batch_size: Per-device train batch size.
        eval_batch_size: Per-device evaluation batch size (None: 2 x batch_size).
        gradient_accumulation_steps: Micro-batches per optimizer step.
        max_length: Truncation length in tokens (None: catalog default or 128); must not exceed the model limit.
        image_size: Images only: input size in pixels, replacing the model's (smaller is faster on CPU; the
            choice is saved in ``preprocessor.json`` so export and serving use the same size).
        unfreeze_top_layers: With ``feature_extraction``, also train the top N encoder layers (for images: the
            top N stages, the top convolution counting as one).
        pooling: ``auto`` (mean for mean-pooling sentence-embedding models, else the model's own), ``cls``, ``mean``.
        early_stopping_patience: Stop after N evaluations without improvement (0: off).
        early_stopping_min_delta: Smallest change of the metric that counts as an improvement.
        metric: Validation metric for best-checkpoint selection and early stopping.
        eval_steps: Evaluate (and log validation curves) every N optimizer steps (None: once per epoch).
        save_steps: Checkpoint every N optimizer steps (None: at every evaluation); a multiple of ``eval_steps``.
        save_total_limit: Checkpoints kept besides the best one.
        logging_steps: Log loss, learning rate and gradient norm every N steps.
        seed: Seed for initialisation, data order, dropout and augmentation.
        precision: ``auto`` (bf16, else fp16, on CUDA; fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        augment: Text: ``none``, ``word_dropout`` or ``token_mask``. Images: ``none``, ``image`` (random resized
            crop, horizontal flip, colour jitter) or ``image_no_flip`` (milder, for digits and other images whose
            meaning changes when mirrored). Training examples only.
        augment_prob: Probability of dropping a word / masking a token.
        class_weights: ``none``, ``balanced`` or comma-separated weights per label id.
        l2sp: L2-SP strength alpha; adds ``alpha/2 * ||w - w_pretrained||^2`` over the shared weights.
        group_by_length: Batch examples of similar length together (less padding, same epoch content).
        checkpoint_dir: Where checkpoints go (None: ``<out_dir>.checkpoints`` next to the output).
        resume: Resume from the latest complete checkpoint in ``checkpoint_dir`` when there is one.
        keep_checkpoints: Keep checkpoints after success (None: keep only a user-given ``checkpoint_dir``).
        label_descriptions: Off-the-shelf zero-shot: JSON file mapping label name to a description.
        zero_shot_temperature: Off-the-shelf zero-shot: logits are ``cosine / temperature``.
        feature_cache: When nothing in the base is trainable, compute its features once and train the head on them.
        preserve_source: After training, run the forgetting mitigation in :mod:`transferkit.train.preserve`.
        min_retention: Retention target passed to ``preserve_source``.
        dataloader_workers: DataLoader worker processes.
        allow_pickle: Accept pickle (``pytorch_model.bin``) weights.
        trust_remote_code: Accept models that ship custom code.

    """

    data_dir: Path
    model: str
    strategy: str
    out_dir: Path
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    llrd: float = 1.0
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    scheduler: str | None = None
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    max_length: int | None = None
    image_size: int | None = None
    unfreeze_top_layers: int = 0
    pooling: str = "auto"
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    metric: str = "accuracy"
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 42
    precision: str = "auto"
    gradient_checkpointing: bool = False
    augment: str = "none"
    augment_prob: float = 0.1
    class_weights: str = "none"
    l2sp: float = 0.0
    group_by_length: bool = True
    checkpoint_dir: Path | None = None
    resume: bool = True
    keep_checkpoints: bool | None = None
    label_descriptions: Path | None = None
    zero_shot_temperature: float = 0.05
    feature_cache: bool = True
    preserve_source: bool = False
    min_retention: float = 0.5
    dataloader_workers: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    _parsed_class_weights: str | list[float] = field(default="none", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.out_dir = Path(self.out_dir)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        if self.label_descriptions is not None:
            self.label_descriptions = Path(self.label_descriptions)
        if not str(self.model).strip():
            raise ConfigError("model: a catalog name, model directory or hub id is required")
        _choice("strategy", self.strategy, STRATEGIES)
        for name in ("learning_rate", "head_learning_rate", "epochs", "batch_size", "eval_batch_size",
                     "max_steps", "max_length", "image_size", "eval_steps", "save_steps"):
            _positive(name, getattr(self, name))
        for name in ("batch_size", "eval_batch_size", "max_steps", "max_length", "image_size", "eval_steps",
                     "save_steps"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, int):
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
        for name in ("gradient_accumulation_steps", "save_total_limit", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("unfreeze_top_layers", "early_stopping_patience", "dataloader_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: expected an integer >= 0, got {value!r}")
        if self.max_length is not None and self.max_length < 4:
            raise ConfigError(f"max_length: expected at least 4 tokens, got {self.max_length}")
        if not (0 < self.llrd <= 1):
            raise ConfigError(f"llrd: expected a factor in (0, 1] (1 = no decay), got {self.llrd!r}")
        if self.weight_decay is not None and not (0 <= self.weight_decay < 1):
            raise ConfigError(f"weight_decay: expected a value in [0, 1), got {self.weight_decay!r}")
        if self.warmup_ratio is not None and not (0 <= self.warmup_ratio < 1):
            raise ConfigError(f"warmup_ratio: expected a fraction in [0, 1), got {self.warmup_ratio!r}")
        if self.scheduler is not None:
            _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("metric", self.metric, METRICS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("pooling", self.pooling, POOLINGS)
        if not (0 <= self.augment_prob < 1):
            raise ConfigError(f"augment_prob: expected a probability in [0, 1), got {self.augment_prob!r}")
        if self.early_stopping_min_delta < 0:
            raise ConfigError(f"early_stopping_min_delta: expected >= 0, got {self.early_stopping_min_delta!r}")
        if not math.isfinite(self.l2sp) or self.l2sp < 0:
            raise ConfigError(f"l2sp: expected an alpha >= 0, got {self.l2sp!r}")
        _positive("zero_shot_temperature", self.zero_shot_temperature, allow_none=False)
        if not (0 <= self.min_retention <= 1):
            raise ConfigError(f"min_retention: expected a fraction in [0, 1], got {self.min_retention!r}")
        self._parsed_class_weights = parse_class_weights(self.class_weights)
        if self.unfreeze_top_layers and self.strategy != "feature_extraction":
            raise ConfigError(
                f"unfreeze_top_layers: only applies to strategy feature_extraction, not {self.strategy}"
            )
        if self.l2sp and self.strategy in ("scratch", "off_the_shelf"):
            raise ConfigError(f"l2sp: needs pre-trained weights to stay close to; strategy {self.strategy} has none")
        if self.label_descriptions is not None and self.strategy != "off_the_shelf":
            raise ConfigError("label_descriptions: only used by strategy off_the_shelf (zero-shot)")
        if self.save_steps is not None and self.eval_steps is not None and self.save_steps % self.eval_steps:
            raise ConfigError(
                f"save_steps: {self.save_steps} must be a multiple of eval_steps ({self.eval_steps}) so the best "
                "checkpoint can be restored"
            )
        data, out = self.data_dir.absolute(), self.out_dir.absolute()
        if out == data or data in out.parents:
            raise ConfigError(f"out_dir: {out} must not be inside the dataset directory {data}")
        if self.checkpoint_dir is not None and self.checkpoint_dir.absolute() == out:
            raise ConfigError("checkpoint_dir: must differ from out_dir (the output is replaced atomically)")

    @property
    def parsed_class_weights(self) -> str | list[float]:
        """``'none'``, ``'balanced'`` or the explicit list of weights."""
        return self._parsed_class_weights

    @property
    def resolved_checkpoint_dir(self) -> Path:
        """The checkpoint directory: the given one, or ``<out_dir>.checkpoints`` beside the output."""
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir.absolute()
        out = self.out_dir.absolute()
        return out.with_name(out.name + ".checkpoints")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the user-facing fields."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


# CLI flag for every TrainConfig field; used to rebuild a command line for torchrun and TrainJob launches.
CLI_FLAGS: dict[str, str] = {
    "data_dir": "--data", "model": "--model", "strategy": "--strategy", "out_dir": "--out",
    "learning_rate": "--learning-rate", "head_learning_rate": "--head-learning-rate", "llrd": "--llrd",
    "weight_decay": "--weight-decay", "warmup_ratio": "--warmup-ratio", "scheduler": "--scheduler",
    "epochs": "--epochs", "max_steps": "--max-steps", "batch_size": "--batch-size",
    "eval_batch_size": "--eval-batch-size", "gradient_accumulation_steps": "--gradient-accumulation-steps",
    "max_length": "--max-length", "image_size": "--image-size",
    "unfreeze_top_layers": "--unfreeze-top-layers", "pooling": "--pooling",
    "early_stopping_patience": "--early-stopping-patience",
    "early_stopping_min_delta": "--early-stopping-min-delta", "metric": "--metric",
    "eval_steps": "--eval-steps", "save_steps": "--save-steps", "save_total_limit": "--save-total-limit",
    "logging_steps": "--logging-steps", "seed": "--seed", "precision": "--precision",
    "augment": "--augment", "augment_prob": "--augment-prob", "class_weights": "--class-weights",
    "l2sp": "--l2sp", "checkpoint_dir": "--checkpoint-dir", "label_descriptions": "--label-descriptions",
    "zero_shot_temperature": "--zero-shot-temperature", "min_retention": "--min-retention",
    "dataloader_workers": "--dataloader-workers",
}
# Boolean fields map to a --flag/--no-flag pair.
CLI_BOOL_FLAGS: dict[str, tuple[str, str]] = {
    "gradient_checkpointing": ("--gradient-checkpointing", "--no-gradient-checkpointing"),
    "group_by_length": ("--group-by-length", "--no-group-by-length"),
    "resume": ("--resume", "--no-resume"),
    "feature_cache": ("--feature-cache", "--no-feature-cache"),
    "preserve_source": ("--preserve-source", "--no-preserve-source"),
    "allow_pickle": ("--allow-pickle", "--no-allow-pickle"),
    "trust_remote_code": ("--trust-remote-code", "--no-trust-remote-code"),
    "keep_checkpoints": ("--keep-checkpoints", "--no-keep-checkpoints"),
}


def config_to_cli_args(config: TrainConfig) -> list[str]:
    """Return ``transferkit train`` arguments that reproduce ``config`` (defaults are left out).

    Used to relaunch the same run under ``torchrun`` or in a Kubeflow Trainer TrainJob.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.init}
    args: list[str] = []
    for name, flag in CLI_FLAGS.items():
        value = getattr(config, name)
        required = name in ("data_dir", "model", "strategy", "out_dir")
        if value is None or (not required and value == defaults.get(name)):
            continue
        args += [flag, str(value)]
    for name, (on, off) in CLI_BOOL_FLAGS.items():
        value = getattr(config, name)
        if value is None or value == defaults.get(name):
            continue
        args.append(on if value else off)
    return args
