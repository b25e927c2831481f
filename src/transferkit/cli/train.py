"""`transferkit train`: fine-tune a base model on a prepared dataset with a transfer strategy."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors
from transferkit.errors import ConfigError, TrainingError


class Launcher(StrEnum):
    """Where the training processes run."""

    local = "local"
    trainjob = "trainjob"


@handle_errors
def train(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory (transferkit data prepare)."),
    model: str = typer.Option(..., "--model", help="Catalog name (minilm-l6), model directory or hub id."),
    strategy: str = typer.Option(
        ..., "--strategy", help="full | feature_extraction | scratch | off_the_shelf."
    ),
    out: Path = typer.Option(..., "--out", help="Model directory to write (replaced atomically on success)."),
    learning_rate: float | None = typer.Option(None, "--learning-rate", "--lr",
                                               help="LR of the pre-trained weights (default: catalog or 5e-5)."),
    head_learning_rate: float | None = typer.Option(None, "--head-learning-rate", "--head-lr",
                                                    help="LR of the new head (default: catalog; 1e-3 frozen)."),
    llrd: float = typer.Option(1.0, "--llrd", help="Layer-wise LR decay factor in (0, 1]; 1 = off."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay."),
    warmup_ratio: float | None = typer.Option(None, "--warmup-ratio", help="Fraction of steps with LR warmup."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="linear | cosine | constant."),
    epochs: float | None = typer.Option(None, "--epochs", help="Training epochs."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Per-device batch size."),
    eval_batch_size: int | None = typer.Option(None, "--eval-batch-size", help="Evaluation batch size."),
    gradient_accumulation_steps: int = typer.Option(1, "--gradient-accumulation-steps", "--grad-accum",
                                                    help="Micro-batches per optimizer step."),
    max_length: int | None = typer.Option(None, "--max-length", help="Truncation length in tokens."),
    image_size: int | None = typer.Option(None, "--image-size",
                                          help="Images: input size in pixels (default: the model's)."),
    unfreeze_top_layers: int = typer.Option(0, "--unfreeze-top-layers",
                                            help="feature_extraction: also train the top N layers."),
    pooling: str = typer.Option("auto", "--pooling", help="auto | cls | mean."),
    early_stopping_patience: int = typer.Option(0, "--early-stopping-patience",
                                                help="Stop after N evaluations without improvement (0 = off)."),
    early_stopping_min_delta: float = typer.Option(0.0, "--early-stopping-min-delta",
                                                   help="Smallest improvement that counts."),
    metric: str = typer.Option("accuracy", "--metric", help="Validation metric: accuracy | f1_macro | loss."),
    eval_steps: int | None = typer.Option(None, "--eval-steps", help="Evaluate every N steps (default: epoch)."),
    save_steps: int | None = typer.Option(None, "--save-steps",
                                          help="Checkpoint every N steps (default: each evaluation)."),
    save_total_limit: int = typer.Option(2, "--save-total-limit", help="Checkpoints kept besides the best."),
    logging_steps: int = typer.Option(1, "--logging-steps", help="Log loss/LR/grad norm every N steps."),
    seed: int = typer.Option(42, "--seed", help="Random seed."),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | fp16 | bf16."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing"),
    augment: str = typer.Option("none", "--augment",
                                help="Text: none | word_dropout | token_mask. Images: none | image | image_no_flip."),
    augment_prob: float = typer.Option(0.1, "--augment-prob", help="Augmentation probability."),
    class_weights: str = typer.Option("none", "--class-weights", help="none | balanced | w0,w1,..."),
    l2sp: float = typer.Option(0.0, "--l2sp", help="L2-SP alpha: pull shared weights to pre-trained values."),
    group_by_length: bool = typer.Option(True, "--group-by-length/--no-group-by-length",
                                         help="Batch similar lengths together (less padding)."),
    checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir",
                                               help="Checkpoint directory (default: <out>.checkpoints)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from the latest complete checkpoint."),
    keep_checkpoints: bool | None = typer.Option(None, "--keep-checkpoints/--no-keep-checkpoints",
                                                 help="Keep checkpoints after success (default: only a given dir)."),
    label_descriptions: Path | None = typer.Option(None, "--label-descriptions",
                                                   help="off_the_shelf: JSON {label: description}."),
    zero_shot_temperature: float = typer.Option(0.05, "--zero-shot-temperature", help="Zero-shot logit temperature."),
    feature_cache: bool = typer.Option(True, "--feature-cache/--no-feature-cache",
                                       help="Cache frozen-base features (feature_extraction)."),
    preserve_source: bool = typer.Option(False, "--preserve-source/--no-preserve-source",
                                         help="Apply the forgetting mitigation after training."),
    min_retention: float = typer.Option(0.5, "--min-retention", help="Retention target for --preserve-source."),
    dataloader_workers: int = typer.Option(0, "--dataloader-workers", help="DataLoader worker processes."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle/--no-allow-pickle", help="Accept pickle weights."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code/--no-trust-remote-code",
                                           help="Accept models with custom code."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Processes on this node (torchrun)."),
    launcher: Launcher = typer.Option(Launcher.local, "--launcher", help="local | trainjob (Kubeflow Trainer)."),
    nodes: int = typer.Option(1, "--nodes", help="trainjob: number of nodes."),
    gpus_per_node: int = typer.Option(1, "--gpus-per-node", help="trainjob: GPUs per node."),
    namespace: str = typer.Option("transferkit", "--namespace", help="trainjob: Kubernetes namespace."),
    checkpoint_pvc: str | None = typer.Option(None, "--checkpoint-pvc", help="trainjob: PVC for checkpoints."),
    output_pvc: str | None = typer.Option(None, "--output-pvc", help="trainjob: PVC for the output."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="trainjob: wait for completion."),
    timeout: float = typer.Option(86400.0, "--timeout", help="trainjob: seconds to wait."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one line of JSON."),
) -> None:
    """Fine-tune a base model with a transfer strategy; write a model directory."""
    from transferkit.train.config import TrainConfig, config_to_cli_args

    config = TrainConfig(
        data_dir=data, model=model, strategy=strategy, out_dir=out, learning_rate=learning_rate,
        head_learning_rate=head_learning_rate, llrd=llrd, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
        scheduler=scheduler, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        eval_batch_size=eval_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        max_length=max_length, image_size=image_size, unfreeze_top_layers=unfreeze_top_layers, pooling=pooling,
        early_stopping_patience=early_stopping_patience, early_stopping_min_delta=early_stopping_min_delta,
        metric=metric, eval_steps=eval_steps, save_steps=save_steps, save_total_limit=save_total_limit,
        logging_steps=logging_steps, seed=seed, precision=precision, gradient_checkpointing=gradient_checkpointing,
        augment=augment, augment_prob=augment_prob, class_weights=class_weights, l2sp=l2sp,
        group_by_length=group_by_length, checkpoint_dir=checkpoint_dir, resume=resume,
        keep_checkpoints=keep_checkpoints, label_descriptions=label_descriptions,
        zero_shot_temperature=zero_shot_temperature, feature_cache=feature_cache, preserve_source=preserve_source,
        min_retention=min_retention, dataloader_workers=dataloader_workers, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    if nproc_per_node < 1:
        raise ConfigError(f"nproc_per_node: expected an integer >= 1, got {nproc_per_node}")
    if launcher == Launcher.trainjob:
        if nodes < 1 or gpus_per_node < 0:
            raise ConfigError(f"nodes/gpus_per_node: expected nodes >= 1 and gpus >= 0, got {nodes}/{gpus_per_node}")
        try:
            from transferkit.train.trainjob import submit_train_job
        except ImportError as exc:
            raise TrainingError(
                f"--launcher trainjob: the trainjob launcher is unavailable in this installation ({exc})"
            ) from exc
        record = submit_train_job(
            config_to_cli_args(config), nodes=nodes, gpus_per_node=gpus_per_node, namespace=namespace,
            checkpoint_pvc=checkpoint_pvc, output_pvc=output_pvc, wait=wait, timeout_s=timeout,
        )
        if as_json:
            typer.echo(json.dumps(record, default=str))
        else:
            console.print(f"TrainJob submitted: {json.dumps(record, default=str)}")
        return

    from transferkit.train.distributed import in_distributed_child, launch_torchrun

    if nproc_per_node > 1 and not in_distributed_child():
        launch_torchrun(config_to_cli_args(config), nproc_per_node)
        summary = out / "training_summary.json"
        if as_json and summary.is_file():
            typer.echo(json.dumps(json.loads(summary.read_text(encoding="utf-8"))))
        else:
            console.print(f"Wrote {out} ({nproc_per_node} processes)")
        return

    from transferkit.train import run_training

    result = run_training(config)
    if not result.written:
        return
    if as_json:
        # One line, last on stdout, so callers can parse it even after log output.
        typer.echo(json.dumps(result.to_dict(), default=str))
        return
    best = "n/a" if result.best_metric_value is None else f"{result.best_metric_value:.4f}"
    console.print(
        f"Wrote {result.out_dir}: strategy {result.strategy}, validation {result.best_metric_name} {best}, "
        f"stop {result.stop_reason}, {result.trainable_params:,}/{result.total_params:,} params trained, "
        f"{result.wall_time_s:.1f}s on {result.device}"
    )
    for warning in result.warnings:
        console.print(f"warning: {warning}")
