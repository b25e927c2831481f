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

from transferkit.data.long_text import AGGREGATIONS, CHUNK_LOSSES, LONG_DOCUMENTS, TRUNCATIONS, parse_max_length
from transferkit.errors import ConfigError
from transferkit.options import option, to_cli_args

STRATEGIES = ("full", "feature_extraction", "scratch", "off_the_shelf", "lora", "distill")
SCHEDULERS = ("linear", "cosine", "constant")
METRICS = ("accuracy", "f1_macro", "loss")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
AUGMENTATIONS = ("none", "word_dropout", "token_mask", "image", "image_no_flip")
POOLINGS = ("auto", "cls", "mean")
DECODINGS = ("greedy", "beam", "sampling")
# Options that only generative tasks read (the classification tasks refuse them when set).
GENERATION_OPTIONS = ("max_new_tokens", "decoding", "num_beams", "temperature", "top_p", "repetition_penalty")
QUANTIZE_BASE = ("none", "4bit", "8bit")
QUANTIZATION_AWARE_MODES = ("none", "int4")
QUANTIZATION_AWARE_STRATEGIES = ("lora", "full")
# LoRA options and their defaults: set to anything else with a strategy other than lora is a ConfigError.
LORA_DEFAULTS: dict[str, Any] = {"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.05, "lora_target": "",
                                 "dora": False, "lora_scale": 1.0, "quantize_base": "none"}
# Distillation options and their defaults: set to anything else with a strategy other than distill is a ConfigError.
DISTILL_DEFAULTS: dict[str, Any] = {"teacher": None, "student_layers": None, "distill_alpha": 0.5,
                                    "distill_temperature": 2.0}

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
# LoRA adapters start from zero: 5e-4 reached 86.6% with SmolLM2 on movie-sentiment (DESIGN.md section 5).
DEFAULT_LORA_LEARNING_RATE = 5e-4


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

    Each option is declared once, here: its ``option(...)`` metadata holds the CLI flag and the help text
    (the ``transferkit train`` options are derived from it, see :mod:`transferkit.options`) and the KFP
    component value that means "not given". Options left as ``None`` are resolved later from the model's
    catalog entry (``entry.hyperparameters``) or :data:`DEFAULT_HYPERPARAMETERS`.
    """

    data_dir: Path = field(metadata=option("--data", help="Prepared dataset directory (transferkit data prepare)."))
    model: str = field(metadata=option("--model", help="Catalog name (minilm-l6), model directory or hub id."))
    strategy: str = field(metadata=option("--strategy", help=" | ".join(STRATEGIES) + "."))
    out_dir: Path = field(metadata=option("--out", help="Model directory to write (replaced atomically on success)."))
    learning_rate: float | None = field(default=None, metadata=option(
        "--learning-rate", "--lr", kfp_unset=0, help="LR of the pre-trained weights (default: catalog or 5e-5)."))
    head_learning_rate: float | None = field(default=None, metadata=option(
        "--head-learning-rate", "--head-lr", kfp_unset=0,
        help="LR of the new head (default: catalog; 1e-3 with a frozen base)."))
    llrd: float = field(default=1.0, metadata=option(
        "--llrd", help="Layer-wise LR decay factor in (0, 1]: the layer d below the top gets lr * llrd**d; 1 = off."))
    weight_decay: float | None = field(default=None, metadata=option(
        "--weight-decay", kfp_unset=-1.0, help="AdamW weight decay in [0, 1) (default: catalog or 0.01)."))
    warmup_ratio: float | None = field(default=None, metadata=option(
        "--warmup-ratio", kfp_unset=-1.0, help="Fraction of optimizer steps with linear LR warmup, in [0, 1)."))
    scheduler: str | None = field(default=None, metadata=option(
        "--scheduler", kfp_unset="", help=" | ".join(SCHEDULERS) + " (after warmup)."))
    epochs: float | None = field(default=None, metadata=option(
        "--epochs", kfp_unset=0, help="Training epochs (default: catalog or 3; 10 on cached features of a "
        "frozen base). Ignored when --max-steps is set."))
    max_steps: int | None = field(default=None, metadata=option(
        "--max-steps", kfp_unset=0, help="Optimizer steps (overrides --epochs)."))
    batch_size: int | None = field(default=None, metadata=option(
        "--batch-size", kfp_unset=0, help="Per-device batch size."))
    eval_batch_size: int | None = field(default=None, metadata=option(
        "--eval-batch-size", help="Per-device evaluation batch size (default: 2 x batch size)."))
    gradient_accumulation_steps: int = field(default=1, metadata=option(
        "--gradient-accumulation-steps", "--grad-accum", help="Micro-batches per optimizer step."))
    max_length: str | None = field(default=None, metadata=option(
        "--max-length", kfp_unset=0, help="Tokens per input, or auto (the default for text: the 95th percentile "
        "of the training split's token lengths, rounded up to a multiple of 8, capped by the model's limit; for "
        "summarization/instruction the length of prompt + target, capped at 1024); saved with the model."))
    truncation: str = field(default="head", metadata=option(
        "--truncation", help="Text longer than max_length: head (first tokens) | tail (last tokens) | head_tail "
        "(first quarter and last three quarters of the budget)."))
    long_documents: str = field(default="truncate", metadata=option(
        "--long-documents", help="truncate (one window, see --truncation) | chunk (overlapping windows, each "
        "inheriting the document's label; logits aggregated per document by --aggregation)."))
    stride: int | None = field(default=None, metadata=option(
        "--stride", kfp_unset=-1, help="chunk: tokens a window shares with the previous one (default: a quarter "
        "of the window)."))
    aggregation: str = field(default="mean", metadata=option(
        "--aggregation", help="chunk: mean of the windows' logits (the document's overall label) | max (per class, "
        "the strongest window: 'any window' labels)."))
    chunk_loss: str = field(default="window", metadata=option(
        "--chunk-loss", help="chunk: window (every window trained on its document's label) | document (a "
        "document's windows share a batch and the loss is on their logits aggregated by --aggregation, as "
        "documents are scored: multiple-instance learning; --batch-size then counts documents)."))
    image_size: int | None = field(default=None, metadata=option(
        "--image-size", kfp_unset=0, help="Images: input size in pixels (default: the model's); saved in "
        "preprocessor.json so export and serving use it."))
    unfreeze_top_layers: int = field(default=0, metadata=option(
        "--unfreeze-top-layers", help="feature_extraction: also train the top N layers (images: stages)."))
    pooling: str = field(default="auto", metadata=option(
        "--pooling", help="auto (mean for sentence-embedding models, else the model's own) | cls | mean."))
    early_stopping_patience: int = field(default=0, metadata=option(
        "--early-stopping-patience", help="Stop after N evaluations without improvement (0 = off)."))
    early_stopping_min_delta: float = field(default=0.0, metadata=option(
        "--early-stopping-min-delta", help="Smallest improvement that counts."))
    metric: str = field(default="accuracy", metadata=option(
        "--metric", help="Validation metric for the best checkpoint and early stopping: " + " | ".join(METRICS) + "."))
    eval_steps: int | None = field(default=None, metadata=option(
        "--eval-steps", help="Evaluate every N steps (default: each epoch)."))
    save_steps: int | None = field(default=None, metadata=option(
        "--save-steps", help="Checkpoint every N steps, a multiple of --eval-steps (default: each evaluation)."))
    save_total_limit: int = field(default=2, metadata=option(
        "--save-total-limit", help="Checkpoints kept besides the best."))
    logging_steps: int = field(default=1, metadata=option(
        "--logging-steps", help="Log loss/LR/grad norm every N steps."))
    seed: int = field(default=42, metadata=option(
        "--seed", help="Seed of initialisation, data order, dropout and augmentation."))
    precision: str = field(default="auto", metadata=option(
        "--precision", help="auto (bf16, else fp16, on CUDA; fp32 on CPU) | fp32 | fp16 | bf16."))
    gradient_checkpointing: bool = field(default=False, metadata=option(
        "--gradient-checkpointing", help="Recompute activations in the backward pass to save memory."))
    augment: str = field(default="none", metadata=option(
        "--augment", help="Text: none | word_dropout | token_mask. Images: none | image (random resized crop, "
        "flip, colour jitter) | image_no_flip. Training examples only."))
    augment_prob: float = field(default=0.1, metadata=option(
        "--augment-prob", help="Probability of dropping a word / masking a token."))
    class_weights: str = field(default="none", metadata=option(
        "--class-weights", help="none | balanced | w0,w1,... (one weight per label id)."))
    l2sp: float = field(default=0.0, metadata=option(
        "--l2sp", help="L2-SP alpha: adds alpha/2 * ||w - w_pretrained||^2 over the shared weights."))
    group_by_length: bool = field(default=True, metadata=option(
        "--group-by-length", help="Batch similar lengths together (less padding, same epoch content)."))
    checkpoint_dir: Path | None = field(default=None, metadata=option(
        "--checkpoint-dir", help="Checkpoint directory (default: <out>.checkpoints)."))
    resume: bool = field(default=True, metadata=option(
        "--resume", help="Resume from the latest complete checkpoint."))
    keep_checkpoints: bool | None = field(default=None, metadata=option(
        "--keep-checkpoints", help="Keep checkpoints after success (default: only a given --checkpoint-dir)."))
    label_descriptions: Path | None = field(default=None, metadata=option(
        "--label-descriptions", help="off_the_shelf: JSON {label: description}."))
    zero_shot_temperature: float = field(default=0.05, metadata=option(
        "--zero-shot-temperature", help="off_the_shelf: logits are cosine / temperature."))
    max_new_tokens: int = field(default=64, metadata=option(
        "--max-new-tokens", kfp_unset=0, help="Generative tasks: longest generated output in tokens (saved with "
        "the model in generation_config.json, used by evaluate)."))
    decoding: str = field(default="greedy", metadata=option(
        "--decoding", help="Generative tasks: " + " | ".join(DECODINGS) + " (sampling is seeded with --seed)."))
    num_beams: int = field(default=4, metadata=option(
        "--num-beams", help="Generative tasks: beams of --decoding beam."))
    temperature: float = field(default=0.7, metadata=option(
        "--temperature", help="Generative tasks: temperature of --decoding sampling."))
    top_p: float = field(default=0.9, metadata=option(
        "--top-p", help="Generative tasks: nucleus mass of --decoding sampling, in (0, 1]."))
    repetition_penalty: float = field(default=1.0, metadata=option(
        "--repetition-penalty", help="Generative tasks: penalty >= 1 on repeated tokens (1 = off)."))
    feature_cache: bool = field(default=True, metadata=option(
        "--feature-cache", help="When nothing in the base trains, compute its features once and train the head "
        "on them."))
    lora_rank: int = field(default=8, metadata=option(
        "--lora-rank", help="lora: rank r of the low-rank update."))
    lora_alpha: float = field(default=16.0, metadata=option(
        "--lora-alpha", help="lora: scaling numerator; the update is (alpha / r) * B @ A."))
    lora_dropout: float = field(default=0.05, metadata=option(
        "--lora-dropout", help="lora: dropout on the adapter input, in [0, 1)."))
    lora_target: str = field(default="", metadata=option(
        "--lora-target", help="lora: comma-separated module names, or all-linear (default per architecture: "
        "BERT/ViT query,value; Llama q_proj,k_proj,v_proj,o_proj)."))
    dora: bool = field(default=False, metadata=option(
        "--dora", help="lora: weight-decomposed LoRA (DoRA)."))
    lora_scale: float = field(default=1.0, metadata=option(
        "--lora-scale", help="lora: multiply the merged low-rank update by this factor in (0, 1] (LoRA's own "
        "preserve-source knob: less update, less forgetting)."))
    quantize_base: str = field(default="none", metadata=option(
        "--quantize-base", help="lora: load the frozen base in 4bit | 8bit (QLoRA; CUDA only) | none."))
    quantization_aware: str = field(default="none", metadata=option(
        "--quantization-aware", help="lora, full: train against the weights the export's int4 graph holds "
        "(int4: generative models; the int4 export then keeps the trained quality) | none."))
    teacher: Path | None = field(default=None, metadata=option(
        "--teacher", kfp_unset="", help="distill: the fine-tuned teacher model directory (transferkit train output; "
        "same labels as the data, same tokenizer/processor as --model)."))
    student_layers: int | None = field(default=None, metadata=option(
        "--student-layers", kfp_unset=0, help="distill: the student keeps the bottom k encoder layers of --model, "
        "1 <= k < the base's layers (default: half, rounded down, at least 1)."))
    distill_alpha: float = field(default=0.5, metadata=option(
        "--distill-alpha", help="distill: weight in [0, 1] of the KL to the teacher's temperature-softened logits; "
        "the task loss gets 1 - alpha."))
    distill_temperature: float = field(default=2.0, metadata=option(
        "--distill-temperature", help="distill: softmax temperature T > 0 of the KL (scaled by T^2)."))
    preserve_source: bool = field(default=False, metadata=option(
        "--preserve-source", help="Apply the forgetting mitigation after training."))
    min_retention: float = field(default=0.5, metadata=option(
        "--min-retention", help="Retention target for --preserve-source."))
    dataloader_workers: int = field(default=0, metadata=option(
        "--dataloader-workers", help="DataLoader worker processes."))
    allow_pickle: bool = field(default=False, metadata=option("--allow-pickle", help="Accept pickle weights."))
    trust_remote_code: bool = field(default=False, metadata=option(
        "--trust-remote-code", help="Accept models with custom code."))
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
        self.max_length = parse_max_length(self.max_length)
        _choice("truncation", self.truncation, TRUNCATIONS)
        _choice("long_documents", self.long_documents, LONG_DOCUMENTS)
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                        or self.stride < 0):
            raise ConfigError(f"stride: expected a non-negative number of overlapping tokens, got {self.stride!r}")
        if self.stride is not None and self.long_documents != "chunk":
            raise ConfigError("stride: applies to --long-documents chunk")
        _choice("chunk_loss", self.chunk_loss, CHUNK_LOSSES)
        if self.chunk_loss == "document" and self.long_documents != "chunk":
            raise ConfigError("chunk_loss: document applies to --long-documents chunk")
        for name in ("learning_rate", "head_learning_rate", "epochs", "batch_size", "eval_batch_size",
                     "max_steps", "image_size", "eval_steps", "save_steps"):
            _positive(name, getattr(self, name))
        for name in ("batch_size", "eval_batch_size", "max_steps", "image_size", "eval_steps", "save_steps"):
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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed: expected an integer in [0, 2**32 - 1] (numpy's range), got {self.seed!r}")
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
        _choice("decoding", self.decoding, DECODINGS)
        for name in ("max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        _positive("temperature", self.temperature, allow_none=False)
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p: expected a probability mass in (0, 1], got {self.top_p!r}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty >= 1):
            raise ConfigError(f"repetition_penalty: expected a penalty >= 1 (1 = off), got {self.repetition_penalty!r}")
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
        self._check_lora()
        self._check_quantization_aware()
        self._check_distill()
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

    def _check_lora(self) -> None:
        _choice("quantize_base", self.quantize_base, QUANTIZE_BASE)
        if self.strategy != "lora":
            for name, default in LORA_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ConfigError(f"{name}: only applies to strategy lora, not {self.strategy}")
            return
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank <= 0:
            raise ConfigError(f"lora_rank: expected an integer >= 1, got {self.lora_rank!r}")
        _positive("lora_alpha", self.lora_alpha, allow_none=False)
        if not (0 <= self.lora_dropout < 1):
            raise ConfigError(f"lora_dropout: expected a probability in [0, 1), got {self.lora_dropout!r}")
        if not (0 < self.lora_scale <= 1):
            raise ConfigError(f"lora_scale: expected a factor in (0, 1] (1 = the trained update), got "
                              f"{self.lora_scale!r}")
        targets = self.lora_targets
        if targets is not None and (not targets or any(not t or " " in t for t in targets)):
            raise ConfigError(f"lora_target: expected comma-separated module names or all-linear, got "
                              f"{self.lora_target!r}")
        if self.l2sp:
            raise ConfigError("l2sp: does not apply to strategy lora (the base weights are frozen)")

    def _check_quantization_aware(self) -> None:
        _choice("quantization_aware", self.quantization_aware, QUANTIZATION_AWARE_MODES)
        if self.quantization_aware == "none":
            return
        if self.strategy not in QUANTIZATION_AWARE_STRATEGIES:
            raise ConfigError(f"quantization_aware: applies to strategies {' and '.join(QUANTIZATION_AWARE_STRATEGIES)}"
                              f", not {self.strategy}")
        if self.dora or self.lora_scale != 1.0 or self.quantize_base != "none":
            option_name = "dora" if self.dora else "lora_scale" if self.lora_scale != 1.0 else "quantize_base"
            raise ConfigError(f"{option_name}: cannot be combined with quantization_aware {self.quantization_aware} "
                              "(training rounds the plain merged weight W + BA the export quantizes)")

    def _check_distill(self) -> None:
        if self.teacher is not None:
            self.teacher = Path(self.teacher)
        if self.strategy != "distill":
            for name, default in DISTILL_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ConfigError(f"{name}: only applies to strategy distill, not {self.strategy}")
            return
        if self.teacher is None or not str(self.teacher).strip():
            raise ConfigError("teacher: strategy distill needs --teacher MODEL_DIR (a fine-tuned model directory)")
        if self.student_layers is not None and (isinstance(self.student_layers, bool)
                                                or not isinstance(self.student_layers, int) or self.student_layers < 1):
            raise ConfigError(f"student_layers: expected an integer >= 1 (encoder layers the student keeps), got "
                              f"{self.student_layers!r}")
        if not (isinstance(self.distill_alpha, int | float) and 0 <= self.distill_alpha <= 1):
            raise ConfigError(f"distill_alpha: expected a weight in [0, 1], got {self.distill_alpha!r}")
        _positive("distill_temperature", self.distill_temperature, allow_none=False)
        if self.preserve_source:
            raise ConfigError("preserve_source: moves layers back toward the base one by one; a distill student has "
                              "fewer layers than the base (`transferkit forgetting` still measures it)")
        if self.teacher.absolute() == self.out_dir.absolute():
            raise ConfigError(f"out_dir: {self.out_dir} is the teacher directory; write the student elsewhere")

    @property
    def lora_targets(self) -> list[str] | None:
        """The requested LoRA target module names (``["all-linear"]`` for all), or None for the default."""
        if not self.lora_target.strip():
            return None
        return [t.strip() for t in self.lora_target.split(",")]

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


def reject_generation_options(config: TrainConfig, task: str) -> None:
    """Refuse the generation options (``--max-new-tokens``, ``--decoding``...) for a task that does not generate.

    Raises:
        ConfigError: Naming the first option set away from its default.

    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in GENERATION_OPTIONS}
    for name in GENERATION_OPTIONS:
        if getattr(config, name) != defaults[name]:
            raise ConfigError(f"{name}: applies to generative tasks (summarization, instruction), not {task}")


def config_to_cli_args(config: TrainConfig) -> list[str]:
    """Return ``transferkit train`` arguments that reproduce ``config`` (defaults are left out).

    Used to relaunch the same run under ``torchrun`` or in a Kubeflow Trainer TrainJob.
    """
    return to_cli_args(config)
