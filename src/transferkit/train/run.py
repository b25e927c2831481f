"""The fine-tune step: ``run_training(TrainConfig) -> TrainResult``.

Reads a prepared dataset and a base model, applies a transfer strategy, trains with the Hugging Face
Trainer (checkpointing into a stable directory so a preempted run resumes exactly), and writes the model
directory atomically: safetensors weights, config with ``id2label``/``label2id``, tokenizer,
``labels.json``, ``training_summary.json``, curves (PNG), an HTML/Markdown report, the log history and
TensorBoard event files. Under ``torchrun`` every rank trains and rank 0 writes the output.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.data.prepared import load_prepared
from transferkit.errors import ConfigError, ModelError, PreparedDataError, TrainingError
from transferkit.io import atomic_output_dir, write_json
from transferkit.models.catalog import CatalogEntry, ResolvedModel, resolve_model
from transferkit.tasks.image_classification import IMAGE_CLASSIFICATION
from transferkit.train.checkpoints import TENSORBOARD_DIR
from transferkit.train.config import (
    DEFAULT_FEATURE_EXTRACTION_HEAD_LR,
    DEFAULT_FROZEN_EPOCHS,
    DEFAULT_HYPERPARAMETERS,
    TrainConfig,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
REPORT_STEM = "training_report"
CURVES_FILE = "training_curves.png"
HISTORY_FILE = "log_history.json"
SUPPORTED_TASKS = ("text-classification", "image-classification")


@dataclass
class TrainResult:
    """What a fine-tune run produced (everything a KFP component needs for Metrics and reports).

    Attributes:
        out_dir: The model directory (written only by rank 0 under torchrun).
        written: Whether this process wrote ``out_dir``.
        strategy: Transfer strategy.
        model: Base model reference.
        labels: Label names in id order.
        best_metric_name: Validation metric used for model selection (``accuracy``, ``f1_macro``, ``loss``).
        best_metric_value: Its value for the returned model.
        validation_metrics: Validation metrics of the returned model (``accuracy``, ``f1_macro``, ``loss``...).
        train_loss: Mean training loss of this process's training call (None for off_the_shelf).
        trainable_params: Parameters updated by training.
        total_params: All parameters of the saved model.
        best_step: Optimizer step of the restored best checkpoint.
        global_step: Optimizer steps done.
        epochs_completed: Epochs done (fractional).
        stop_reason: ``epochs``, ``max_steps``, ``early_stopping`` or ``no_training``.
        wall_time_s: Wall time of the whole step.
        train_samples_per_second: Training throughput (the Trainer's definition).
        device: ``cpu``, ``cuda``...
        precision: ``fp32``, ``bf16`` or ``fp16``.
        world_size: Number of training processes.
        resumed_from: Checkpoint the run resumed from, if any.
        feature_cache: Fast-path details when the head was trained on cached features.
        warnings: Diagnostics (overfitting...) also shown in the report.
        summary_path: ``training_summary.json``.
        report_html: HTML report.
        report_md: Markdown report.
        curves_png: Loss/metric/gradient-norm curves.
        tensorboard_dir: TensorBoard event files.
        checkpoint_dir: Where checkpoints were kept (None when removed after success).
        preserve_source: Summary returned by the forgetting mitigation, if it ran.

    """

    out_dir: Path
    written: bool
    strategy: str
    model: str
    labels: list[str]
    best_metric_name: str
    best_metric_value: float | None
    validation_metrics: dict[str, float]
    train_loss: float | None
    trainable_params: int
    total_params: int
    best_step: int | None
    global_step: int
    epochs_completed: float
    stop_reason: str
    wall_time_s: float
    train_samples_per_second: float | None
    device: str
    precision: str
    world_size: int
    resumed_from: str | None = None
    feature_cache: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    summary_path: Path | None = None
    report_html: Path | None = None
    report_md: Path | None = None
    curves_png: Path | None = None
    tensorboard_dir: Path | None = None
    checkpoint_dir: Path | None = None
    preserve_source: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (paths as strings)."""
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


# ---------------------------------------------------------------------------------------------- helpers


def _dist_info() -> tuple[int, int]:
    """(world size, global rank) from the torchrun environment."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def resolve_hyperparameters(config: TrainConfig, entry: CatalogEntry | None, model_limit: int) -> dict[str, Any]:
    """Fill unset options from the catalog entry, then built-in defaults; check ``max_length``.

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
    head_default = defaults.get("head_learning_rate")
    if head_default is None:
        head_default = DEFAULT_FEATURE_EXTRACTION_HEAD_LR if config.strategy == "feature_extraction" else learning_rate
    head_learning_rate = float(config.head_learning_rate or head_default)
    if config.max_length is not None and config.max_length > model_limit:
        raise ConfigError(f"max_length: {config.max_length} exceeds the model's limit of {model_limit} tokens")
    max_length = int(config.max_length or min(int(defaults["max_length"]), model_limit))
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


def _resolve_precision(requested: str) -> tuple[str, str]:
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


def _compute_metrics(eval_pred: Any) -> dict[str, float]:
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


def _model_limit(resolved: ResolvedModel, tokenizer: Any) -> int:
    from transformers import AutoConfig

    from transferkit.train.modeling import model_max_length

    config = AutoConfig.from_pretrained(resolved.path)
    return model_max_length(config, tokenizer)


def _check_task(dataset: Any) -> None:
    if dataset.task not in SUPPORTED_TASKS:
        raise PreparedDataError(
            f"{dataset.path / 'schema.json'}: task {dataset.task!r} is not supported by train; "
            f"expected one of {', '.join(SUPPORTED_TASKS)}"
        )


def _save_model_dir(target: Path, model: Any, tokenizer: Any, labels: list[str]) -> None:
    """Save weights (safetensors), config with label maps, tokenizer and labels.json into ``target``."""
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.config.num_labels = len(labels)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    write_json(target / "labels.json", list(labels))
    if not (target / "model.safetensors").is_file() and not (target / "model.safetensors.index.json").is_file():
        raise TrainingError(f"{target}: save_pretrained wrote no safetensors weights")


def _check_off_the_shelf_head(resolved: ResolvedModel, labels: list[str]) -> list[int] | None:
    """Permutation for a classifier whose head fits the labels; None for an embedding model.

    Raises:
        ModelError: The model has a head that does not match and is not an embedding model.

    """
    from transferkit.train.zeroshot import head_permutation

    head = resolved.head_labels
    if head is not None:
        permutation = head_permutation(head, labels)
        if permutation is not None:
            return permutation
    if not resolved.is_embedding_model:
        raise ModelError(
            f"{resolved.reference}: off_the_shelf needs a head whose labels match labels.json {labels} "
            f"(model head: {head}) or an embedding model for zero-shot; use strategy full or feature_extraction"
        )
    return None


# ------------------------------------------------------------------------------------------ main entry


def run_training(config: TrainConfig) -> TrainResult:
    """Run the fine-tune step end to end (see module docstring).

    Raises:
        ConfigError: Invalid option for this model (max_length, unfreeze_top_layers, precision...).
        PreparedDataError: Missing files, bad rows, unsupported task.
        ModelError: Model cannot be resolved/loaded or does not fit the strategy.
        CheckpointError: The checkpoint directory belongs to another run.
        TrainingError: Training or saving failed.

    """
    started = time.perf_counter()
    dataset = load_prepared(config.data_dir)
    _check_task(dataset)
    from transferkit.train.data import file_digest, read_split

    labels = list(dataset.labels)
    resolved = resolve_model(config.model, allow_pickle=config.allow_pickle,
                             trust_remote_code=config.trust_remote_code)
    if resolved.entry is not None and resolved.entry.task != dataset.task:
        raise ModelError(f"model {config.model!r} is for {resolved.entry.task}; the data in {dataset.path} is for "
                         f"{dataset.task}")
    if dataset.task == IMAGE_CLASSIFICATION:
        return _run_image(config, dataset, resolved, labels, started)
    if config.augment in ("image", "image_no_flip") or config.image_size is not None:
        raise ConfigError(f"{'augment' if config.image_size is None else 'image_size'}: applies to image data; "
                          f"the data in {dataset.path} is for {dataset.task}")
    from transferkit.models.loading import load_tokenizer
    from transferkit.train.modeling import resolve_pooling

    train_split = read_split(dataset, "train")
    validation_split = read_split(dataset, "validation")

    tokenizer = load_tokenizer(resolved, trust_remote_code=config.trust_remote_code)
    hp = resolve_hyperparameters(config, resolved.entry, _model_limit(resolved, tokenizer))
    digests = {split: file_digest(dataset.path / f"{split}.parquet") for split in ("train", "validation")}
    context = _RunContext(config, dataset, resolved, tokenizer, hp, labels, train_split, validation_split, digests,
                          started)
    if config.strategy == "off_the_shelf":
        return _run_off_the_shelf(context)
    context.pooling = resolve_pooling(config.pooling, resolved)
    return _run_trained(context)


@dataclass
class _RunContext:
    config: TrainConfig
    dataset: Any
    resolved: ResolvedModel
    tokenizer: Any
    hp: dict[str, Any]
    labels: list[str]
    train_split: Any
    validation_split: Any
    digests: dict[str, str]
    started: float
    pooling: str = "cls"
    image: Any = None  # transferkit.train.image_task.ImageTask for image data


def _run_image(config: TrainConfig, dataset: Any, resolved: ResolvedModel, labels: list[str],
               started: float) -> TrainResult:
    """Fine-tune an image classifier: the shared loop with the image parts of :mod:`.image_task`."""
    from transferkit.train.data import file_digest
    from transferkit.train.image_task import image_task_for, read_image_split

    image = image_task_for(config, resolved)
    train_split = read_image_split(dataset, "train")
    validation_split = read_image_split(dataset, "validation")
    hp = resolve_hyperparameters(config, resolved.entry, model_limit=1 << 30)
    for key in ("max_length", "model_max_length"):
        hp.pop(key)
    hp["image_size"] = image.preprocessor.config.image_size
    digests = {split: file_digest(dataset.path / f"{split}.parquet") for split in ("train", "validation")}
    context = _RunContext(config, dataset, resolved, None, hp, labels, train_split, validation_split, digests,
                          started, pooling="model", image=image)
    if config.strategy == "off_the_shelf":
        return _run_image_off_the_shelf(context)
    return _run_trained(context)


def _run_image_off_the_shelf(ctx: _RunContext) -> TrainResult:
    """Package an image classifier whose head already knows the dataset's labels (rows reordered to match)."""
    import numpy as np

    from transferkit.evaluate.image_inference import predict_image_proba
    from transferkit.evaluate.inference import select_device
    from transferkit.models.vision import load_image_classifier
    from transferkit.train.modeling import count_parameters
    from transferkit.train.zeroshot import head_permutation, reorder_head

    config = ctx.config
    world_size, rank = _dist_info()
    model = load_image_classifier(ctx.resolved, allow_pickle=config.allow_pickle,
                                  trust_remote_code=config.trust_remote_code)
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    head = [id2label.get(i, str(i)) for i in range(int(model.config.num_labels))]
    permutation = head_permutation(head, ctx.labels)
    if permutation is None:
        shown = head if len(head) <= 10 else [*head[:10], "..."]
        raise ModelError(f"{ctx.resolved.reference}: off_the_shelf needs a head whose labels match labels.json "
                         f"{ctx.labels} (model head: {shown}); images have no zero-shot path: use "
                         "feature_extraction (seconds on cached features) or full")
    reorder_head(model, permutation, ctx.labels)
    model.eval()
    device = select_device()
    probs = predict_image_proba(model, ctx.image.preprocessor, ctx.validation_split.images,
                                batch_size=ctx.hp["eval_batch_size"], device=device, desc="validation",
                                where="validation.parquet", progress=_interactive())
    from transformers import EvalPrediction

    labels = np.asarray(ctx.validation_split.labels)
    validation = _compute_metrics(EvalPrediction(predictions=np.log(np.clip(probs, 1e-12, 1.0)), label_ids=labels))
    validation["loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))
    _, total = count_parameters(model)
    core: dict[str, Any] = {
        "trainable": 0, "total": total, "stop_reason": "no_training", "device": device.type, "precision": "fp32",
        "world_size": world_size, "global_step": 0, "epochs": 0.0, "best_step": None, "validation": validation,
        "resolved": {"mode": "existing_head", "image_size": ctx.hp["image_size"]},
    }
    if rank != 0:
        return _result(ctx, core, written=False, checkpoint_dir=None)
    with atomic_output_dir(config.out_dir) as tmp:
        ctx.image.save(tmp, model, ctx.labels)
        artifacts = _write_untrained_reports(tmp, ctx, core)
    return _untrained_result(ctx, core, artifacts)


def _write_untrained_reports(directory: Path, ctx: _RunContext, core: dict[str, Any]) -> dict[str, Any]:
    """Write the summary and report of a run that packaged a model without training; return the artifact names."""
    from transferkit.train.diagnostics import Curves
    from transferkit.train.report import write_training_report

    summary = _summary(ctx, core)
    md_path, html_path, png = write_training_report(directory, ctx, core, Curves(), stem=REPORT_STEM,
                                                    curves_name=CURVES_FILE)
    summary["artifacts"] = {"report_html": html_path.name, "report_md": md_path.name,
                            "curves_png": png.name if png else None, "log_history": None, "tensorboard": None}
    write_json(directory / SUMMARY_FILE, summary)
    return summary["artifacts"]


def _untrained_result(ctx: _RunContext, core: dict[str, Any], artifacts: dict[str, Any]) -> TrainResult:
    out = ctx.config.out_dir.absolute()
    png = artifacts["curves_png"]
    return _result(ctx, core, written=True, checkpoint_dir=None, summary_path=out / SUMMARY_FILE,
                   report_html=out / artifacts["report_html"], report_md=out / artifacts["report_md"],
                   curves_png=(out / png) if png else None)


def _build_model(ctx: _RunContext) -> Any:
    """Load (or randomly initialise, for scratch) the classifier and install mean pooling if chosen."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

    from transferkit.models.loading import load_sequence_classifier
    from transferkit.train.modeling import MEAN_POOLING_MARKER, add_mean_pooling_layer, reinit_pooler

    config = ctx.config
    set_seed(config.seed)
    had_pooling_layer = ctx.resolved.config.get(MEAN_POOLING_MARKER) is not None
    if config.strategy == "scratch":
        model_config = AutoConfig.from_pretrained(
            ctx.resolved.path, num_labels=len(ctx.labels), id2label=dict(enumerate(ctx.labels)),
            label2id={n: i for i, n in enumerate(ctx.labels)}, trust_remote_code=config.trust_remote_code,
        )
        if had_pooling_layer:
            # Rebuild the fixed pooling layer rather than randomising it with the trainable layers.
            model_config.num_hidden_layers -= 1
            delattr(model_config, MEAN_POOLING_MARKER)
            had_pooling_layer = False
        try:
            model = AutoModelForSequenceClassification.from_config(
                model_config, trust_remote_code=config.trust_remote_code
            )
        except Exception as exc:
            raise ModelError(
                f"{ctx.resolved.path}: cannot build the architecture ({type(exc).__name__}: {exc})"
            ) from exc
    else:
        model = load_sequence_classifier(ctx.resolved, ctx.labels, allow_pickle=config.allow_pickle,
                                         trust_remote_code=config.trust_remote_code)
    if ctx.pooling == "mean" and not had_pooling_layer:
        add_mean_pooling_layer(model)
        reinit_pooler(model, config.seed)
    if getattr(model.config, "pad_token_id", None) is None and ctx.tokenizer.pad_token_id is not None:
        model.config.pad_token_id = ctx.tokenizer.pad_token_id
    torch.manual_seed(config.seed)
    return model


def _steps(n_train: int, hp: dict[str, Any], world_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) as the Trainer computes them."""
    batches = math.ceil(n_train / (hp["batch_size"] * world_size))
    per_epoch = max(math.ceil(batches / hp["gradient_accumulation_steps"]), 1)
    total = hp["max_steps"] if hp["max_steps"] else math.ceil(hp["epochs"] * per_epoch)
    return per_epoch, max(int(total), 1)


def _run_identity(ctx: _RunContext, extra: dict[str, Any]) -> dict[str, Any]:
    config = ctx.config
    keys = ("strategy", "llrd", "unfreeze_top_layers", "early_stopping_patience", "early_stopping_min_delta",
            "metric", "seed", "augment", "augment_prob", "class_weights", "l2sp", "group_by_length",
            "label_descriptions")
    identity = {k: getattr(config, k) for k in keys}
    identity.update({k: v for k, v in ctx.hp.items() if k != "model_max_length"})
    identity.update({
        "model": str(ctx.resolved.path), "data": ctx.digests, "labels": ctx.labels, "pooling": ctx.pooling,
        "label_descriptions": None if config.label_descriptions is None else str(config.label_descriptions),
    })
    if ctx.image is not None:
        identity["preprocessing"] = ctx.image.preprocessing
        identity["augment_config"] = ctx.image.augmenter.config.to_dict()
    identity.update(extra)
    return identity


def _run_trained(ctx: _RunContext) -> TrainResult:
    """Train with strategy full, feature_extraction or scratch."""
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments, default_data_collator
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from transferkit.train.callbacks import (
        EpochTimerCallback,
        LoggingCallback,
        ManifestCallback,
        OverfittingWarningCallback,
        QuietProgressCallback,
    )
    from transferkit.train.data import TokenizedDataset, class_weight_vector
    from transferkit.train.features import FeatureDataset, build_head_model, cached_features, supports_feature_cache
    from transferkit.train.modeling import count_parameters, freeze_for_strategy
    from transferkit.train.optim import L2SPPenalty
    from transferkit.train.trainer import TransferTrainer

    config, hp = ctx.config, ctx.hp
    world_size, rank = _dist_info()
    device, precision = _resolve_precision(config.precision)
    if ctx.image is not None:
        from transformers import set_seed

        from transferkit.train.image_task import freeze_image_model

        set_seed(config.seed)
        model = ctx.image.build_model(ctx.resolved, ctx.labels, config.strategy, allow_pickle=config.allow_pickle,
                                      trust_remote_code=config.trust_remote_code)
        torch.manual_seed(config.seed)
        frozen = freeze_image_model(model, config.strategy, config.unfreeze_top_layers)
    else:
        model = _build_model(ctx)
        frozen = freeze_for_strategy(model, config.strategy, config.unfreeze_top_layers)
    layout = frozen["layout"]
    if config.gradient_checkpointing and config.strategy == "feature_extraction":
        # Checkpointed segments need an input that requires grad when the embeddings are frozen.
        model.enable_input_require_grads()
    trainable, total = count_parameters(model)

    if ctx.image is not None:
        from transferkit.train.image_task import supports_image_feature_cache

        train_ds, eval_ds = ctx.image.datasets(ctx.train_split, ctx.validation_split)
        cache_supported = supports_image_feature_cache(model)
    else:
        train_ds = TokenizedDataset(ctx.train_split, ctx.tokenizer, hp["max_length"], augment=config.augment,
                                    augment_prob=config.augment_prob, seed=config.seed)
        eval_ds = TokenizedDataset(ctx.validation_split, ctx.tokenizer, hp["max_length"])
        cache_supported = supports_feature_cache(model)
    weights = class_weight_vector(config.parsed_class_weights, ctx.train_split.labels, len(ctx.labels))
    use_cache = (
        config.strategy == "feature_extraction" and frozen["base_frozen"] and config.feature_cache
        and cache_supported and train_ds.augment == "none"
    )
    if config.strategy == "feature_extraction" and frozen["base_frozen"] and config.feature_cache and not use_cache:
        logger.info("Feature cache not used (%s); training through the frozen base",
                    "augmentation changes inputs" if train_ds.augment != "none" else "architecture not supported")

    steps_per_epoch, total_steps = _steps(len(train_ds), hp, world_size)
    eval_steps = config.eval_steps or (config.save_steps if config.save_steps else None) or min(
        steps_per_epoch, total_steps)
    save_steps = config.save_steps or eval_steps
    if save_steps % eval_steps:
        raise ConfigError(f"save_steps: {save_steps} must be a multiple of eval_steps ({eval_steps})")

    checkpoint_dir = config.resolved_checkpoint_dir
    metric_key = "eval_loss" if config.metric == "loss" else f"eval_{config.metric}"
    scheduler = hp["scheduler"]
    if scheduler == "constant" and hp["warmup_ratio"] > 0:
        scheduler = "constant_with_warmup"
    args_kwargs: dict[str, Any] = {
        "output_dir": str(checkpoint_dir),
        "per_device_train_batch_size": hp["batch_size"],
        "per_device_eval_batch_size": hp["eval_batch_size"],
        "num_train_epochs": hp["epochs"],
        "max_steps": hp["max_steps"] or -1,
        "learning_rate": hp["learning_rate"],
        "lr_scheduler_type": scheduler,
        # transformers 5 has no warmup_ratio: a float in [0, 1) is read as a fraction of the total steps.
        "warmup_steps": hp["warmup_ratio"],
        "weight_decay": hp["weight_decay"],
        "gradient_accumulation_steps": hp["gradient_accumulation_steps"],
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "activation_checkpointing": config.gradient_checkpointing and not use_cache,
        "logging_strategy": "steps",
        "logging_steps": config.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": eval_steps,
        "save_strategy": "steps",
        "save_steps": save_steps,
        # At least two: a kill during a save must leave the previous complete checkpoint.
        "save_total_limit": max(2, config.save_total_limit),
        "load_best_model_at_end": True,
        # Early-stopping patience counters continue where the checkpoint left them (exact resume).
        "restore_callback_states_from_checkpoint": True,
        "metric_for_best_model": metric_key,
        "greater_is_better": config.metric != "loss",
        "report_to": "none",
        "seed": config.seed,
        "dataloader_num_workers": config.dataloader_workers,
        "use_cpu": device == "cpu",
        "disable_tqdm": not _interactive(),
    }
    if world_size > 1:
        args_kwargs["ddp_backend"] = "nccl" if device == "cuda" else "gloo"
        if ctx.resolved.model_type == "bert" or use_cache or ctx.image is not None:
            # Every trainable parameter is used in each forward: skip DDP's unused-parameter search.
            args_kwargs["ddp_find_unused_parameters"] = False
    args = TrainingArguments(**args_kwargs)
    _ = args.device  # sets up the process group under torchrun, needed to agree on the checkpoint

    identity = _run_identity(ctx, {"world_size": world_size, "precision": precision, "feature_cache": use_cache,
                                   "eval_steps": eval_steps, "save_steps": save_steps})
    resume_from = _prepare_checkpoint_dir(checkpoint_dir, identity, resume=config.resume, rank=rank,
                                          world_size=world_size)
    if resume_from is not None:
        logger.info("Resuming from %s", resume_from)

    tensorboard_dir = checkpoint_dir / TENSORBOARD_DIR
    callbacks: list[Any] = [ManifestCallback(), OverfittingWarningCallback(), EpochTimerCallback(),
                            LoggingCallback(every=max(1, total_steps // 20))]
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(tensorboard_dir))))
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_min_delta))

    feature_info: dict[str, Any] | None = None
    common: dict[str, Any] = {
        "num_layers": layout.num_layers,
        "head_learning_rate": hp["head_learning_rate"],
        "llrd": config.llrd,
        "class_weights": weights,
        "train_lengths": train_ds.lengths if config.group_by_length and ctx.image is None else None,
        "compute_metrics": _compute_metrics,
        "callbacks": callbacks,
    }
    if use_cache:
        cache_started = time.perf_counter()
        model.to(args.device)
        if ctx.image is not None:
            from transferkit.train.image_task import build_image_head_model

            features, cache_path, hit = ctx.image.cached_features(
                model, Path(ctx.resolved.path), {"train": train_ds, "validation": eval_ds}, ctx.digests,
                hp["eval_batch_size"],
            )
            head_model = build_image_head_model(model)
        else:
            features, cache_path, hit = cached_features(
                model, Path(ctx.resolved.path), {"train": train_ds, "validation": eval_ds}, ctx.tokenizer,
                ctx.digests, hp["eval_batch_size"],
            )
            head_model = build_head_model(model)
        feature_info = {"used": True, "cache_dir": cache_path, "cache_hit": hit,
                        "seconds": round(time.perf_counter() - cache_started, 3)}
        trainer = TransferTrainer(
            model=head_model, args=args,
            train_dataset=FeatureDataset(features["train"], ctx.train_split.labels),
            eval_dataset=FeatureDataset(features["validation"], ctx.validation_split.labels),
            data_collator=default_data_collator, classify=None, l2sp=None, **common,
        )
    else:
        l2sp = L2SPPenalty(model, config.l2sp, layout.classify) if config.l2sp > 0 else None
        if ctx.image is not None:
            collator, eval_order = default_data_collator, list(range(len(eval_ds)))
        else:
            collator = DataCollatorWithPadding(ctx.tokenizer, pad_to_multiple_of=8 if device == "cuda" else None)
            eval_order = sorted(range(len(eval_ds)), key=lambda i: eval_ds.lengths[i])  # less padding, same metrics
        trainer = TransferTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=_Reordered(eval_ds, eval_order),
            data_collator=collator, processing_class=ctx.tokenizer, classify=layout.classify, l2sp=l2sp, **common,
        )
        if config.strategy == "feature_extraction":
            feature_info = {"used": False}

    # Logs go through `logging` (LoggingCallback); the stock callbacks would print them to stdout.
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback())
    train_started = time.perf_counter()
    # A head on cached features runs tiny ops (a 32 x 384 batch): on CPU, intra-op threads only add
    # synchronisation (measured 10 ms per tanh on a busy 2-core machine), so they run on one thread.
    threads = torch.get_num_threads()
    if use_cache and device == "cpu":
        torch.set_num_threads(1)
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        # predict() (not evaluate()) so the selected model's metrics do not enter the curves' log history.
        final = trainer.predict(trainer.eval_dataset, metric_key_prefix="validation").metrics
    except (ConfigError, PreparedDataError, ModelError):
        raise
    except torch.OutOfMemoryError as exc:
        raise TrainingError(f"out of memory during training; lower --batch-size or --max-length ({exc})") from exc
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"training failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        torch.set_num_threads(threads)
    train_seconds = time.perf_counter() - train_started
    validation = {k[len("validation_"):]: float(v) for k, v in final.items()
                  if k.startswith("validation_") and not k.endswith(("_runtime", "_per_second"))}
    state = trainer.state
    stop_reason = "max_steps" if hp["max_steps"] else "epochs"
    # The Trainer replaces callbacks restored from a checkpoint: look the early stopper up again.
    early_stopping = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)),
                          None)
    if early_stopping is not None and early_stopping.early_stopping_patience_counter >= \
            early_stopping.early_stopping_patience and state.global_step < state.max_steps:
        stop_reason = "early_stopping"
    best_step = state.best_global_step
    timer = next(c for c in callbacks if isinstance(c, EpochTimerCallback))

    result_core: dict[str, Any] = {
        "validation": validation,
        "train_loss": float(output.training_loss),
        "train_metrics": {k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)},
        "trainable": trainable,
        "total": total,
        "best_step": best_step,
        "global_step": state.global_step,
        "epochs": float(state.epoch or 0.0),
        "stop_reason": stop_reason,
        "device": args.device.type,
        "precision": precision,
        "world_size": world_size,
        "resumed_from": str(resume_from) if resume_from else None,
        "feature_cache": feature_info,
        "log_history": state.log_history,
        "epoch_seconds": timer.epoch_seconds,
        "train_seconds": train_seconds,
        "resolved": {
            **hp, "scheduler": scheduler, "steps_per_epoch": steps_per_epoch, "total_steps": state.max_steps,
            "warmup_steps": args.get_warmup_steps(state.max_steps), "eval_steps": eval_steps,
            "save_steps": save_steps, "effective_batch_size": hp["batch_size"] * hp["gradient_accumulation_steps"]
            * world_size, "pooling": ctx.pooling, "class_weights": weights,
            "trainable_layers": frozen["trainable_layers"], "num_layers": layout.num_layers,
            "param_groups": _describe_groups(trainer.optimizer),
        },
    }
    if rank != 0:
        return _result(ctx, result_core, written=False, checkpoint_dir=checkpoint_dir)
    model.eval()
    return _write_output(ctx, model, result_core, checkpoint_dir=checkpoint_dir, tensorboard_dir=tensorboard_dir)


class _Reordered:
    """A view of a dataset in another order (evaluation sorted by length)."""

    def __init__(self, dataset: Any, order: list[int]) -> None:
        self.dataset = dataset
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.order[index]]


def _describe_groups(optimizer: Any) -> list[dict[str, Any]]:
    if optimizer is None:
        return []
    groups = getattr(optimizer, "param_groups", [])
    return [
        {"group": g.get("group"), "depth": g.get("depth"), "lr": g.get("initial_lr", g.get("lr")),
         "weight_decay": g.get("weight_decay"), "tensors": len(g["params"])}
        for g in groups
    ]


def _prepare_checkpoint_dir(
    checkpoint_dir: Path, identity: dict[str, Any], *, resume: bool, rank: int, world_size: int
) -> Path | None:
    """On rank 0: check the run identity, pick the checkpoint to resume from (or clear); share with all ranks."""
    import torch.distributed as dist

    from transferkit.train.checkpoints import (
        check_run_identity,
        clear_checkpoints,
        clear_logs,
        latest_complete_checkpoint,
        write_run_identity,
    )

    decision: dict[str, Any] = {"path": None, "error": None}
    if rank == 0:
        try:
            if resume:
                check_run_identity(checkpoint_dir, identity)
                found = latest_complete_checkpoint(checkpoint_dir)
                decision["path"] = str(found) if found else None
                if found is None:
                    clear_logs(checkpoint_dir)
            else:
                removed = clear_checkpoints(checkpoint_dir)
                if removed:
                    logger.warning("--no-resume: removed %d old checkpoint(s) from %s", removed, checkpoint_dir)
            write_run_identity(checkpoint_dir, identity)
        except Exception as exc:
            decision["error"] = str(exc)
            if world_size <= 1:
                raise
            holder = [decision]
            dist.broadcast_object_list(holder, src=0)
            raise
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        holder = [decision]
        dist.broadcast_object_list(holder, src=0)
        decision = holder[0]
        if decision["error"]:
            raise TrainingError(f"rank 0 could not prepare the checkpoint directory: {decision['error']}")
    return Path(decision["path"]) if decision["path"] else None


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def _result(ctx: _RunContext, core: dict[str, Any], *, written: bool, checkpoint_dir: Path | None,
            **paths: Any) -> TrainResult:
    metric = ctx.config.metric
    return TrainResult(
        out_dir=ctx.config.out_dir.absolute(),
        written=written,
        strategy=ctx.config.strategy,
        model=ctx.config.model,
        labels=ctx.labels,
        best_metric_name=metric,
        best_metric_value=core["validation"].get(metric),
        validation_metrics=core["validation"],
        train_loss=core.get("train_loss"),
        trainable_params=core["trainable"],
        total_params=core["total"],
        best_step=core.get("best_step"),
        global_step=core.get("global_step", 0),
        epochs_completed=core.get("epochs", 0.0),
        stop_reason=core["stop_reason"],
        wall_time_s=round(time.perf_counter() - ctx.started, 3),
        train_samples_per_second=core.get("train_metrics", {}).get("train_samples_per_second"),
        device=core["device"],
        precision=core["precision"],
        world_size=core.get("world_size", 1),
        resumed_from=core.get("resumed_from"),
        feature_cache=core.get("feature_cache"),
        warnings=core.get("warnings", []),
        checkpoint_dir=checkpoint_dir,
        preserve_source=core.get("preserve_source"),
        **paths,
    )


def _write_output(
    ctx: _RunContext,
    model: Any,
    core: dict[str, Any],
    *,
    checkpoint_dir: Path | None,
    tensorboard_dir: Path | None,
) -> TrainResult:
    """Write the model directory atomically and return the result (rank 0 only)."""
    from transferkit.train.diagnostics import curves_from_history, detect_overfitting, overfitting_message
    from transferkit.train.report import write_training_report

    config = ctx.config
    curves = curves_from_history(core.get("log_history", []))
    episodes = detect_overfitting(curves)
    warnings = [overfitting_message(e) for e in episodes]
    core["warnings"] = warnings
    core["overfitting"] = episodes
    with atomic_output_dir(config.out_dir) as tmp:
        if ctx.image is not None:
            ctx.image.save(tmp, model, ctx.labels)
        else:
            _save_model_dir(tmp, model, ctx.tokenizer, ctx.labels)
        if core.get("log_history"):
            write_json(tmp / HISTORY_FILE, core["log_history"])
        tb_out = None
        if tensorboard_dir is not None and tensorboard_dir.is_dir():
            tb_out = tmp / TENSORBOARD_DIR
            shutil.copytree(tensorboard_dir, tb_out)
        if config.preserve_source:
            core["preserve_source"] = _preserve_source(ctx, tmp)
            core["validation_before_preserve"] = core["validation"]
            core["validation"] = evaluate_model_dir(tmp, ctx)
        # The report and summary describe the final model, so they come last.
        summary = _summary(ctx, core)
        md_path, html_path, png = write_training_report(tmp, ctx, core, curves, stem=REPORT_STEM,
                                                        curves_name=CURVES_FILE)
        summary["artifacts"] = {
            "report_html": html_path.name, "report_md": md_path.name,
            "curves_png": png.name if png else None, "log_history": HISTORY_FILE if core.get("log_history") else None,
            "tensorboard": TENSORBOARD_DIR if tb_out else None,
        }
        write_json(tmp / SUMMARY_FILE, summary)
    out = config.out_dir.absolute()
    kept = checkpoint_dir
    if checkpoint_dir is not None and checkpoint_dir.exists():
        keep = config.keep_checkpoints if config.keep_checkpoints is not None else config.checkpoint_dir is not None
        if not keep:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            kept = None
    logger.info("Wrote %s (%s, validation %s %.4f)", out, config.strategy, config.metric,
                core["validation"].get(config.metric, float("nan")))
    return _result(
        ctx, core, written=True, checkpoint_dir=kept,
        summary_path=out / SUMMARY_FILE, report_html=out / html_path.name, report_md=out / md_path.name,
        curves_png=(out / png.name) if png else None,
        tensorboard_dir=(out / TENSORBOARD_DIR) if tb_out else None,
    )


def _summary(ctx: _RunContext, core: dict[str, Any]) -> dict[str, Any]:
    from transferkit import __version__

    config = ctx.config
    trainable, total = core["trainable"], core["total"]
    return {
        "format_version": 1,
        "transferkit_version": __version__,
        "strategy": config.strategy,
        "model": {
            "reference": config.model, "path": str(ctx.resolved.path), "model_type": ctx.resolved.model_type,
            "embedding_model": ctx.resolved.is_embedding_model, "pooling": ctx.pooling,
        },
        "data": {
            "dir": str(config.data_dir.absolute()), "labels": ctx.labels, "sha256": ctx.digests,
            "train_examples": len(ctx.train_split.labels), "validation_examples": len(ctx.validation_split.labels),
        },
        "config": config.to_dict(),
        "resolved": core.get("resolved", {}),
        "parameters": {"trainable": trainable, "total": total,
                       "trainable_fraction": round(trainable / total, 6) if total else 0.0},
        "best": {"metric": config.metric, "value": core["validation"].get(config.metric),
                 "step": core.get("best_step")},
        "validation": core["validation"],
        "validation_before_preserve": core.get("validation_before_preserve"),
        "train_loss": core.get("train_loss"),
        "stop_reason": core["stop_reason"],
        "global_step": core.get("global_step", 0),
        "epochs_completed": core.get("epochs", 0.0),
        "wall_time_s": round(time.perf_counter() - ctx.started, 3),
        "train_seconds": round(core.get("train_seconds", 0.0), 3),
        "train_samples_per_second": core.get("train_metrics", {}).get("train_samples_per_second"),
        "epoch_seconds": [round(s, 3) for s in core.get("epoch_seconds", [])],
        "device": core["device"],
        "precision": core["precision"],
        "world_size": core.get("world_size", 1),
        "resumed_from": core.get("resumed_from"),
        "feature_cache": core.get("feature_cache"),
        "zero_shot": core.get("zero_shot"),
        "preprocessing": ctx.image.preprocessing if ctx.image is not None else None,
        "diagnostics": {
            "overfitting": core.get("overfitting", []),
            "grad_norm": _grad_norm_stats(core.get("log_history", [])),
        },
        "warnings": core.get("warnings", []),
        "preserve_source": core.get("preserve_source"),
    }


def _grad_norm_stats(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    values = [float(e["grad_norm"]) for e in history if e.get("grad_norm") is not None]
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return {"steps_logged": len(values), "max": max(finite) if finite else None,
            "last": values[-1], "non_finite": len(values) - len(finite)}


def _preserve_source(ctx: _RunContext, model_dir: Path) -> dict[str, Any]:
    """Run the forgetting mitigation on the not-yet-published model directory."""
    try:
        from transferkit.train.preserve import preserve_source
    except ImportError as exc:
        raise TrainingError(
            "--preserve-source: the forgetting mitigation (transferkit.train.preserve) is not available "
            f"in this installation ({exc})"
        ) from exc
    return preserve_source(
        model_dir, base=ctx.config.model, data_dir=ctx.config.data_dir, source=None,
        min_retention=ctx.config.min_retention,
    )


def evaluate_model_dir(model_dir: Path, ctx: _RunContext) -> dict[str, float]:
    """Validation metrics of a saved model directory (after post-processing such as preserve_source)."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from transferkit.train.data import TokenizedDataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device)
    model.eval()
    ds = TokenizedDataset(ctx.validation_split, ctx.tokenizer, ctx.hp["max_length"])
    collator = DataCollatorWithPadding(ctx.tokenizer)
    order = sorted(range(len(ds)), key=lambda i: ds.lengths[i])
    logits_parts, labels_parts, loss_sum = [], [], 0.0
    with torch.inference_mode():
        for start in range(0, len(order), ctx.hp["eval_batch_size"]):
            batch = collator([ds[i] for i in order[start : start + ctx.hp["eval_batch_size"]]]).to(device)
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            logits_parts.append(logits.cpu())
            labels_parts.append(labels.cpu())
    from transformers import EvalPrediction

    logits = torch.cat(logits_parts).numpy()
    labels = torch.cat(labels_parts).numpy()
    metrics = _compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    metrics["loss"] = loss_sum / max(len(labels), 1)
    return metrics


def _run_off_the_shelf(ctx: _RunContext) -> TrainResult:
    """No training: reuse a matching head, or package zero-shot classification for an embedding model."""
    from transferkit.models.loading import load_sequence_classifier
    from transferkit.train.modeling import count_parameters
    from transferkit.train.zeroshot import build_zero_shot_classifier, load_label_descriptions, reorder_head

    config = ctx.config
    world_size, rank = _dist_info()
    device, precision = _resolve_precision("fp32" if config.precision == "auto" else config.precision)
    permutation = _check_off_the_shelf_head(ctx.resolved, ctx.labels)
    zero_shot: dict[str, Any] | None = None
    if permutation is not None:
        model = load_sequence_classifier(ctx.resolved, allow_pickle=config.allow_pickle,
                                         trust_remote_code=config.trust_remote_code)
        reorder_head(model, permutation, ctx.labels)
        ctx.pooling = "model"
        mode = "existing_head"
    else:
        descriptions = load_label_descriptions(config.label_descriptions, ctx.labels)
        import random

        sample = list(ctx.train_split.texts)
        random.Random(config.seed).shuffle(sample)
        model, zero_shot = build_zero_shot_classifier(
            ctx.resolved, ctx.tokenizer, ctx.labels, descriptions=descriptions,
            temperature=config.zero_shot_temperature, sample_texts=sample[:1024],
            check_texts=list(ctx.validation_split.texts)[:512], max_length=ctx.hp["max_length"],
        )
        ctx.pooling = "mean"
        mode = "zero_shot"
    model.eval()
    _, total = count_parameters(model)
    core: dict[str, Any] = {
        "trainable": 0, "total": total, "stop_reason": "no_training", "device": device, "precision": "fp32",
        "world_size": world_size, "global_step": 0, "epochs": 0.0, "best_step": None,
        "zero_shot": zero_shot, "resolved": {"mode": mode, "max_length": ctx.hp["max_length"],
                                             "model_max_length": ctx.hp["model_max_length"]},
        "validation": {},
    }
    if rank != 0:
        return _result(ctx, core, written=False, checkpoint_dir=None)
    # Validation metrics are measured on the packaged directory, exactly what later steps will load.
    with atomic_output_dir(config.out_dir) as tmp:
        _save_model_dir(tmp, model, ctx.tokenizer, ctx.labels)
        core["validation"] = evaluate_model_dir(tmp, ctx)
        if config.preserve_source:
            core["preserve_source"] = _preserve_source(ctx, tmp)
            core["validation_before_preserve"] = core["validation"]
            core["validation"] = evaluate_model_dir(tmp, ctx)
        artifacts = _write_untrained_reports(tmp, ctx, core)
    del precision
    return _untrained_result(ctx, core, artifacts)
