"""The fine-tune step as a recipe: ``run_training(TrainConfig) -> TrainResult``.

Reads a prepared dataset and a base model, applies a transfer strategy, trains with the Hugging Face
Trainer (checkpointing into a stable directory so a preempted run resumes exactly), and writes the model
directory atomically (:mod:`transferkit.train.outputs`). Under ``torchrun`` every rank trains and rank 0
writes the output.

The recipe is the same for every task; the dataset's task (:mod:`transferkit.tasks`) supplies its
:class:`~transferkit.train.side.TrainingSide`. :class:`FineTuneRecipe` runs named stages in order:
``setup_model`` (build, freeze), ``setup_data`` (datasets, class weights, feature-cache decision),
``setup_arguments`` (schedule, checkpoint and evaluation steps, ``TrainingArguments``), ``setup_checkpoints``
(run identity, resume point), ``setup_trainer`` (callbacks, cached features or the full model), ``train``
and ``write_outputs``. Strategy ``off_the_shelf`` has one path for every task: :func:`package_off_the_shelf`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.data.prepared import load_prepared
from transferkit.errors import ConfigError, ModelError, PreparedDataError, TrainingError
from transferkit.io import atomic_output_dir
from transferkit.models.catalog import ResolvedModel, resolve_model
from transferkit.tasks import get_task
from transferkit.train.checkpoints import TENSORBOARD_DIR, prepare_checkpoint_dir
from transferkit.train.config import TrainConfig
from transferkit.train.outputs import (
    SUMMARY_FILE,
    RunOutcome,
    TrainResult,
    apply_preserve_source,
    build_result,
    write_outputs,
    write_reports,
)
from transferkit.train.side import (
    TrainingSide,
    dist_info,
    interactive,
    resolve_hyperparameters,
    resolve_precision,
)

logger = logging.getLogger(__name__)

__all__ = ["FineTuneRecipe", "RunContext", "TrainResult", "package_off_the_shelf", "resolve_hyperparameters",
           "run_training", "setup_run"]


@dataclass
class RunContext:
    """What every stage of a run reads: the configuration, the data, the base model and the task side."""

    config: TrainConfig
    dataset: Any
    resolved: ResolvedModel
    side: TrainingSide
    labels: list[str]
    digests: dict[str, str]
    started: float

    @property
    def hp(self) -> dict[str, Any]:
        """Resolved hyperparameters."""
        return self.side.hp

    @property
    def train_split(self) -> Any:
        """The training split."""
        return self.side.train_split

    @property
    def validation_split(self) -> Any:
        """The validation split."""
        return self.side.validation_split

    @property
    def metric(self) -> str:
        """The validation metric selecting the best checkpoint (the side's choice: ``--metric`` for classification)."""
        return self.side.selection_metric(self.config)

    @property
    def pooling(self) -> str:
        """The pooling of the trained or packaged model."""
        return self.side.pooling


def run_training(config: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run the fine-tune step end to end (see module docstring).

    Args:
        config: The run's configuration.
        callbacks: Extra ``transformers.TrainerCallback`` objects (e.g. the hyperparameter search's pruning
            reporter); an exception they raise ends the run before anything is written.

    Raises:
        ConfigError: Invalid option for this model (max_length, unfreeze_top_layers, precision...).
        PreparedDataError: Missing files, bad rows, unsupported task.
        ModelError: Model cannot be resolved/loaded or does not fit the strategy.
        CheckpointError: The checkpoint directory belongs to another run.
        TrainingError: Training or saving failed.

    """
    ctx = setup_run(config)
    if config.strategy == "off_the_shelf":
        return package_off_the_shelf(ctx)
    return FineTuneRecipe(ctx, callbacks).run()


def setup_run(config: TrainConfig) -> RunContext:
    """Open the dataset, look its task up, resolve the base model and let the task check options and read data.

    Raises:
        PreparedDataError: The dataset is unusable or of an unknown task.
        ModelError: The model cannot be resolved or is a catalog model of another task.
        ConfigError: An option that does not apply to the task.

    """
    from transferkit.train.data import file_digest

    started = time.perf_counter()
    dataset = load_prepared(config.data_dir)
    task = get_task(dataset)
    labels = list(dataset.labels)
    resolved = resolve_model(config.model, allow_pickle=config.allow_pickle,
                             trust_remote_code=config.trust_remote_code)
    if resolved.entry is not None and dataset.task not in resolved.entry.tasks:
        raise ModelError(f"model {config.model!r} is for {' or '.join(resolved.entry.tasks)}; the data in "
                         f"{dataset.path} is for {dataset.task}")
    side = task.training(config, dataset, resolved)
    if config.strategy == "distill":
        from transferkit.train.distill import check_distill

        check_distill(config, dataset, resolved)
    digests = {split: file_digest(dataset.path / f"{split}.parquet") for split in ("train", "validation")}
    return RunContext(config, dataset, resolved, side, labels, digests, started)


def package_off_the_shelf(ctx: RunContext) -> TrainResult:
    """No training: package the task's off-the-shelf model and measure it as later steps will load it."""
    from transferkit.train.modeling import count_parameters

    world_size, rank = dist_info()
    model, packaged = ctx.side.off_the_shelf(ctx)
    _, total = count_parameters(model)
    outcome = RunOutcome(trainable=0, total=total, stop_reason="no_training", device=packaged["device"],
                         precision="fp32", world_size=world_size, resolved=packaged["resolved"],
                         zero_shot=packaged["zero_shot"])
    if rank != 0:
        return build_result(ctx, outcome, written=False, checkpoint_dir=None)
    from transferkit.train.diagnostics import Curves

    with atomic_output_dir(ctx.config.out_dir) as tmp:
        ctx.side.save(tmp, model, ctx.labels)
        outcome.validation = ctx.side.validation_metrics(ctx, tmp, model)
        if ctx.config.preserve_source:
            apply_preserve_source(ctx, tmp, outcome)
        artifacts = write_reports(tmp, ctx, outcome, Curves(), tensorboard=False)
    out = ctx.config.out_dir.absolute()
    png = artifacts["curves_png"]
    return build_result(ctx, outcome, written=True, checkpoint_dir=None, summary_path=out / SUMMARY_FILE,
                        report_html=out / artifacts["report_html"], report_md=out / artifacts["report_md"],
                        curves_png=(out / png) if png else None)


@dataclass
class _Data:
    train: Any
    eval: Any
    use_cache: bool
    class_weights: list[float] | None


class FineTuneRecipe:
    """Strategies ``full``, ``feature_extraction``, ``scratch``, ``lora``, ``distill``: the stages of one run."""

    def __init__(self, ctx: RunContext, callbacks: Sequence[Any] = ()) -> None:
        self.ctx = ctx
        self.extra_callbacks = list(callbacks)
        self.config = ctx.config
        self.world_size, self.rank = dist_info()
        self.device, self.precision = resolve_precision(ctx.config.precision)
        self.parameters = (0, 0)  # (trainable, total), counted once the model is frozen
        self.lora: dict[str, Any] | None = None
        self.distill: dict[str, Any] | None = None
        self.teacher: Any = None
        self.quantization: Any = None  # the quantization-aware emulation handle
        if ctx.config.strategy == "lora":
            from transferkit.train.lora import check_quantize_base

            check_quantize_base(ctx.config.quantize_base, self.device)

    def run(self) -> TrainResult:
        """Run every stage; rank 0 writes the model directory."""
        self.ctx.side.start_training(self.ctx)
        model, frozen = self.setup_model()
        data = self.setup_data(model, frozen)
        args, schedule = self.setup_arguments(data)
        resume_from = self.setup_checkpoints(data, schedule)
        trainer, callbacks, feature_info = self.setup_trainer(model, frozen, data, args)
        outcome = self.train(trainer, callbacks, data, resume_from)
        outcome.feature_cache = feature_info
        outcome.resolved = self._resolved(args, trainer, schedule, frozen, data)
        if self.distill is not None:
            outcome.resolved["distillation"] = self.distill
        if self.quantization is not None:
            outcome.resolved["quantization_aware"] = self.quantization.describe()
            self.quantization.remove()  # the saved model holds the unrounded weights the export quantizes
        checkpoint_dir = self.config.resolved_checkpoint_dir
        if self.rank != 0:
            return build_result(self.ctx, outcome, written=False, checkpoint_dir=checkpoint_dir)
        model.eval()
        outcome.lora = self.lora
        before_reports = self._merge_lora(model, outcome, frozen) if self.lora is not None else None
        return write_outputs(self.ctx, model, outcome, checkpoint_dir=checkpoint_dir,
                             tensorboard_dir=checkpoint_dir / TENSORBOARD_DIR, before_reports=before_reports)

    def _merge_lora(self, model: Any, outcome: RunOutcome, frozen: dict[str, Any]) -> Any:
        """Merge the adapters into the model; return the writer of ``adapter/`` (and re-measure a scaled merge)."""
        from transferkit.train.lora import ADAPTER_DIR, adapter_state, merge_lora, save_adapter

        config = self.config
        state, lora_config = adapter_state(model, frozen["layout"].classify)
        merge_lora(model, config.lora_scale)

        def write_adapter(directory: Path) -> None:
            save_adapter(directory / ADAPTER_DIR, state, lora_config, str(self.ctx.resolved.reference),
                         config.lora_scale)
            if config.lora_scale != 1.0:
                # The merged update was scaled down: what is saved is no longer the model trained and validated.
                outcome.lora = {**(outcome.lora or {}), "validation_unscaled": outcome.validation}
                outcome.validation = self.ctx.side.validation_metrics(self.ctx, directory)

        return write_adapter

    # ------------------------------------------------------------------------------------------ stages

    def setup_model(self) -> tuple[Any, dict[str, Any]]:
        """Build the seeded model and freeze it for the strategy."""
        config = self.config
        from transferkit.train.modeling import count_parameters

        if config.strategy == "distill":
            from transferkit.train.distill import load_teacher

            self.teacher = load_teacher(self.ctx)  # first: a teacher that does not load fails before the base loads
        model = self.ctx.side.build_model(self.ctx)
        if config.strategy == "lora":
            from transferkit.train.lora import apply_lora

            # Nothing pinned to eval mode (LoRA dropout stays active); apply_lora freezes all but adapters + head.
            frozen = self.ctx.side.freeze(model, "full", 0)
            side = self.ctx.side
            self.lora = apply_lora(model, config, frozen["layout"], train_head=side.lora_trains_head,
                                   task_type=side.lora_task_type)
        elif config.strategy == "distill":
            from transferkit.train.distill import check_distill, make_student

            student_layers = check_distill(config, self.ctx.dataset, self.ctx.resolved)
            self.distill = {**make_student(model, student_layers, str(self.ctx.resolved.reference)),
                            "teacher": str(config.teacher), "alpha": config.distill_alpha,
                            "temperature": config.distill_temperature,
                            "teacher_parameters": sum(p.numel() for p in self.teacher.parameters())}
            frozen = self.ctx.side.freeze(model, "full", 0)
        else:
            frozen = self.ctx.side.freeze(model, config.strategy, config.unfreeze_top_layers)
        if config.quantization_aware != "none":
            self.quantization = self.ctx.side.quantization_aware(model, config.quantization_aware)
        if config.gradient_checkpointing and config.strategy in ("feature_extraction", "lora"):
            # Checkpointed segments need an input that requires grad when the embeddings are frozen.
            model.enable_input_require_grads()
        self.parameters = count_parameters(model)
        return model, frozen

    def setup_data(self, model: Any, frozen: dict[str, Any]) -> _Data:
        """Datasets, class weights and whether the frozen base is replaced by cached features."""
        from transferkit.train.data import class_weight_vector

        config, side = self.config, self.ctx.side
        train_ds, eval_ds = side.datasets(self.ctx)
        cache_supported = side.supports_feature_cache(model)
        weights = class_weight_vector(config.parsed_class_weights, self.ctx.train_split.labels, len(self.ctx.labels))
        wanted = config.strategy == "feature_extraction" and frozen["base_frozen"] and config.feature_cache
        use_cache = bool(wanted and cache_supported and train_ds.augment == "none")
        if wanted and not use_cache:
            logger.info("Feature cache not used (%s); training through the frozen base",
                        "augmentation changes inputs" if train_ds.augment != "none" else "architecture not supported")
        return _Data(train_ds, eval_ds, use_cache, weights)

    def setup_arguments(self, data: _Data) -> tuple[Any, dict[str, Any]]:
        """Steps, evaluation and checkpoint cadence, schedule and ``TrainingArguments``.

        Raises:
            ConfigError: ``save_steps`` is not a multiple of ``eval_steps``.

        """
        from transformers import TrainingArguments

        config, hp = self.config, self.ctx.hp
        steps_per_epoch, total_steps = _steps(len(data.train), hp, self.world_size)
        eval_steps = config.eval_steps or (config.save_steps if config.save_steps else None) or min(
            steps_per_epoch, total_steps)
        save_steps = config.save_steps or eval_steps
        if save_steps % eval_steps:
            raise ConfigError(f"save_steps: {save_steps} must be a multiple of eval_steps ({eval_steps})")
        metric = self.ctx.metric
        metric_key = "eval_loss" if metric == "loss" else f"eval_{metric}"
        scheduler = hp["scheduler"]
        if scheduler == "constant" and hp["warmup_ratio"] > 0:
            scheduler = "constant_with_warmup"
        args_kwargs: dict[str, Any] = {
            "output_dir": str(config.resolved_checkpoint_dir),
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
            "bf16": self.precision == "bf16",
            "fp16": self.precision == "fp16",
            "activation_checkpointing": config.gradient_checkpointing and not data.use_cache,
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
            "greater_is_better": metric != "loss",
            "report_to": "none",
            "seed": config.seed,
            "dataloader_num_workers": config.dataloader_workers,
            "use_cpu": self.device == "cpu",
            "disable_tqdm": not interactive(),
        }
        if self.ctx.side.trainer_metrics() is None:
            # Only the loss is evaluated: do not gather logits (a vocabulary-sized tensor per token).
            args_kwargs["prediction_loss_only"] = True
        if self.world_size > 1:
            args_kwargs["ddp_backend"] = "nccl" if self.device == "cuda" else "gloo"
            if self.ctx.side.static_graph(self.ctx.resolved, data.use_cache):
                # Every trainable parameter is used in each forward: skip DDP's unused-parameter search.
                args_kwargs["ddp_find_unused_parameters"] = False
        args = TrainingArguments(**args_kwargs)
        _ = args.device  # sets up the process group under torchrun, needed to agree on the checkpoint
        schedule = {"scheduler": scheduler, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                    "eval_steps": eval_steps, "save_steps": save_steps}
        return args, schedule

    def setup_checkpoints(self, data: _Data, schedule: dict[str, Any]) -> Path | None:
        """Guard the checkpoint directory with the run identity; return the checkpoint to resume from."""
        ctx, config = self.ctx, self.config
        keys = ("strategy", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "dora", "quantize_base",
                "quantization_aware",
                "llrd", "unfreeze_top_layers", "early_stopping_patience", "early_stopping_min_delta",
                "metric", "seed", "augment", "augment_prob", "class_weights", "l2sp", "group_by_length",
                "label_descriptions", "student_layers", "distill_alpha", "distill_temperature")
        identity = {k: getattr(config, k) for k in keys}
        identity["teacher"] = None if config.teacher is None else str(Path(config.teacher).absolute())
        identity.update({k: v for k, v in ctx.hp.items() if k != "model_max_length"})
        identity.update({
            "model": str(ctx.resolved.path), "data": ctx.digests, "labels": ctx.labels, "pooling": ctx.pooling,
            "label_descriptions": None if config.label_descriptions is None else str(config.label_descriptions),
        })
        identity.update(ctx.side.identity())
        identity.update({"world_size": self.world_size, "precision": self.precision, "feature_cache": data.use_cache,
                         "eval_steps": schedule["eval_steps"], "save_steps": schedule["save_steps"]})
        resume_from = prepare_checkpoint_dir(config.resolved_checkpoint_dir, identity, resume=config.resume,
                                             rank=self.rank, world_size=self.world_size)
        if resume_from is not None:
            logger.info("Resuming from %s", resume_from)
        return resume_from

    def setup_trainer(self, model: Any, frozen: dict[str, Any], data: _Data, args: Any
                      ) -> tuple[Any, list[Any], dict[str, Any] | None]:
        """Callbacks and the Trainer: on cached features (head only) or on the whole model."""
        from transformers import EarlyStoppingCallback, default_data_collator
        from transformers.integrations import TensorBoardCallback
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from transferkit.train.callbacks import (
            EpochTimerCallback,
            LoggingCallback,
            ManifestCallback,
            OverfittingWarningCallback,
            QuietProgressCallback,
        )
        from transferkit.train.features import FeatureDataset
        from transferkit.train.optim import L2SPPenalty
        from transferkit.train.trainer import Reordered, TransferTrainer

        ctx, config, side = self.ctx, self.config, self.ctx.side
        _, total_steps = _steps(len(data.train), ctx.hp, self.world_size)
        callbacks: list[Any] = [ManifestCallback(), OverfittingWarningCallback(), EpochTimerCallback(),
                                LoggingCallback(every=max(1, total_steps // 20)), *self.extra_callbacks]
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            tensorboard_dir = config.resolved_checkpoint_dir / TENSORBOARD_DIR
            callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(tensorboard_dir))))
        if config.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_min_delta))
        layout = frozen["layout"]
        common: dict[str, Any] = {
            "num_layers": layout.num_layers,
            "head_learning_rate": ctx.hp["head_learning_rate"],
            "llrd": config.llrd,
            "class_weights": data.class_weights,
            "train_lengths": side.train_lengths(data.train) if config.group_by_length else None,
            "compute_metrics": side.trainer_metrics(),
            "model_computes_loss": side.model_computes_loss,
            "document_aggregation": side.document_aggregation(),
            "callbacks": callbacks,
        }
        feature_info: dict[str, Any] | None = None
        if data.use_cache:
            cache_started = time.perf_counter()
            model.to(args.device)
            features, cache_path, hit = side.cached_features(model, ctx, {"train": data.train,
                                                                          "validation": data.eval})
            feature_info = {"used": True, "cache_dir": cache_path, "cache_hit": hit,
                            "seconds": round(time.perf_counter() - cache_started, 3)}
            trainer = TransferTrainer(
                model=side.head_model(model), args=args,
                train_dataset=FeatureDataset(features["train"], getattr(data.train, "labels", ctx.train_split.labels)),
                eval_dataset=FeatureDataset(features["validation"],
                                            getattr(data.eval, "labels", ctx.validation_split.labels)),
                data_collator=default_data_collator, classify=None, l2sp=None, **common,
            )
        else:
            l2sp = L2SPPenalty(model, config.l2sp, layout.classify) if config.l2sp > 0 else None
            trainer_class, distill = TransferTrainer, {}
            if self.teacher is not None:
                from transferkit.prune.distill import DistillTrainer

                trainer_class = DistillTrainer
                distill = {"teacher": self.teacher, "alpha": config.distill_alpha,
                           "temperature": config.distill_temperature}
            trainer = trainer_class(
                model=model, args=args, train_dataset=data.train,
                eval_dataset=Reordered(data.eval, side.eval_order(data.eval)),
                data_collator=side.collator(self.device), processing_class=side.processing_class,
                classify=layout.classify, l2sp=l2sp, **common, **distill,
            )
            if config.strategy == "feature_extraction":
                feature_info = {"used": False}
        # Logs go through `logging` (LoggingCallback); the stock callbacks would print them to stdout.
        trainer.remove_callback(PrinterCallback)
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(QuietProgressCallback())
        return trainer, callbacks, feature_info

    def train(self, trainer: Any, callbacks: list[Any], data: _Data, resume_from: Path | None) -> RunOutcome:
        """Train (resuming if a checkpoint was found), then measure the selected model on validation.

        Raises:
            TrainingError: Out of memory or a failure inside the training loop.

        """
        import torch
        from transformers import EarlyStoppingCallback

        from transferkit.train.callbacks import EpochTimerCallback

        trainable, total = self.parameters
        train_started = time.perf_counter()
        # A head on cached features runs tiny ops (a 32 x 384 batch): on CPU, intra-op threads only add
        # synchronisation (measured 10 ms per tanh on a busy 2-core machine), so they run on one thread.
        threads = torch.get_num_threads()
        if data.use_cache and self.device == "cpu":
            torch.set_num_threads(1)
        try:
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            # predict() (not evaluate()) so the selected model's metrics do not enter the curves' log history.
            prediction = trainer.predict(trainer.eval_dataset, metric_key_prefix="validation")
            final = prediction.metrics
        except (ConfigError, PreparedDataError, ModelError):
            raise
        except torch.OutOfMemoryError as exc:
            raise TrainingError(f"out of memory during training; lower --batch-size or --max-length ({exc})") from exc
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(f"training failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        finally:
            torch.set_num_threads(threads)
        state = trainer.state
        stop_reason = "max_steps" if self.ctx.hp["max_steps"] else "epochs"
        # The Trainer replaces callbacks restored from a checkpoint: look the early stopper up again.
        early_stopping = next((c for c in trainer.callback_handler.callbacks
                               if isinstance(c, EarlyStoppingCallback)), None)
        if early_stopping is not None and early_stopping.early_stopping_patience_counter >= \
                early_stopping.early_stopping_patience and state.global_step < state.max_steps:
            stop_reason = "early_stopping"
        timer = next(c for c in callbacks if isinstance(c, EpochTimerCallback))
        return RunOutcome(
            trainable=trainable, total=total, stop_reason=stop_reason, device=trainer.args.device.type,
            precision=self.precision, world_size=self.world_size,
            validation=self.ctx.side.document_metrics(trainer.eval_dataset, prediction.predictions,
                                                      self.ctx.side.derived_metrics(
                {k[len("validation_"):]: float(v) for k, v in final.items()
                 if k.startswith("validation_") and not k.endswith(("_runtime", "_per_second"))})),
            train_loss=float(output.training_loss),
            train_metrics={k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)},
            best_step=state.best_global_step, global_step=state.global_step, epochs=float(state.epoch or 0.0),
            resumed_from=str(resume_from) if resume_from else None, log_history=state.log_history,
            epoch_seconds=timer.epoch_seconds, train_seconds=time.perf_counter() - train_started,
        )

    # ------------------------------------------------------------------------------------------ helpers

    def _resolved(self, args: Any, trainer: Any, schedule: dict[str, Any], frozen: dict[str, Any],
                  data: _Data) -> dict[str, Any]:
        from transferkit.train.trainer import describe_groups

        hp, state = self.ctx.hp, trainer.state
        return {
            **hp, "scheduler": schedule["scheduler"], "steps_per_epoch": schedule["steps_per_epoch"],
            "total_steps": state.max_steps, "warmup_steps": args.get_warmup_steps(state.max_steps),
            "eval_steps": schedule["eval_steps"], "save_steps": schedule["save_steps"],
            "effective_batch_size": hp["batch_size"] * hp["gradient_accumulation_steps"] * self.world_size,
            "pooling": self.ctx.pooling, "class_weights": data.class_weights,
            "trainable_layers": frozen["trainable_layers"], "num_layers": frozen["layout"].num_layers,
            "param_groups": describe_groups(trainer.optimizer),
        }


def _steps(n_train: int, hp: dict[str, Any], world_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) as the Trainer computes them."""
    batches = math.ceil(n_train / (hp["batch_size"] * world_size))
    per_epoch = max(math.ceil(batches / hp["gradient_accumulation_steps"]), 1)
    total = hp["max_steps"] if hp["max_steps"] else math.ceil(hp["epochs"] * per_epoch)
    return per_epoch, max(int(total), 1)
