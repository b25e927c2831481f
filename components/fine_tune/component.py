"""KFP component: fine-tune a base model on a prepared dataset with a transfer strategy."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def fine_tune(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    base_model: str = "minilm-l6",
    strategy: str = "full",
    epochs: float = 3.0,
    max_steps: int = 0,
    learning_rate: float = 0.0,
    head_learning_rate: float = 0.0,
    llrd: float = 1.0,
    l2sp: float = 0.0,
    batch_size: int = 0,
    max_length: int = 0,
    truncation: str = "head",
    long_documents: str = "truncate",
    stride: int = -1,
    aggregation: str = "mean",
    chunk_loss: str = "window",
    image_size: int = 0,
    warmup_ratio: float = -1.0,
    weight_decay: float = -1.0,
    scheduler: str = "",
    unfreeze_top_layers: int = 0,
    early_stopping_patience: int = 0,
    augment: str = "none",
    class_weights: str = "none",
    preserve_source: bool = False,
    min_retention: float = 0.5,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
    lora_target: str = "",
    dora: bool = False,
    lora_scale: float = 1.0,
    quantize_base: str = "none",
    quantization_aware: str = "none",
    teacher: str = "",
    student_layers: int = 0,
    distill_alpha: float = 0.5,
    distill_temperature: float = 2.0,
    max_new_tokens: int = 0,
    seed: int = 42,
    checkpoint_root: str = "",
    nproc_per_node: int = 1,
    tuned_options: str = "",
    tuned_config: Input[Artifact] = None,
) -> NamedTuple("FineTuneOutputs", [("validation_metric", float), ("strategy", str)]):
    """Fine-tune ``base_model``; zero/negative numeric options and "" mean "the catalog default".

    Args:
        max_length: Tokens per text input; 0 = chosen from the training split's lengths (text tasks).
        truncation: head | tail | head_tail: which tokens of a longer text are kept.
        long_documents: truncate | chunk (overlapping windows classified and aggregated per document).
        stride: chunk: tokens a window shares with the previous one (-1 = a quarter of the window).
        aggregation: chunk: mean | max of the windows' logits per document.
        chunk_loss: chunk: window (each window on its document's label) | document (loss on aggregated logits).
        preserve_source: Apply the forgetting mitigation (text models; skipped for image data).
        lora_rank: Strategy lora (the other strategies ignore the lora_* options, dora and quantize_base): rank.
        lora_target: Comma-separated module names or all-linear; "" = the architecture's default.
        lora_scale: Multiplier in (0, 1] of the merged low-rank update (LoRA's preserve-source knob).
        quantize_base: none | 4bit | 8bit (QLoRA, CUDA only).
        quantization_aware: none | int4: strategies lora and full of a generative model train against the
            weights of the int4 export (the other strategies ignore it).
        teacher: Strategy distill (the other strategies ignore teacher, student_layers and distill_*): the
            fine-tuned teacher model directory.
        student_layers: Strategy distill: bottom encoder layers of the base the student keeps; 0 = half.
        distill_alpha: Strategy distill: weight of the KL to the teacher (the task loss gets 1 - alpha).
        distill_temperature: Strategy distill: softmax temperature of the KL.
        max_new_tokens: Generative tasks: new tokens generated per answer, saved with the model (0 = default 64).
        checkpoint_root: Directory on a PVC for checkpoints; a retried task resumes from
            ``<checkpoint_root>/<digest of its inputs>``. "" keeps checkpoints next to the output.
        nproc_per_node: Training processes on this node (one per GPU) launched with torchrun.
        tuned_options: JSON train options (e.g. a Katib result); they override the parameters above ("" = none).
        tuned_config: The tune step's best_config artifact; its options override all of the above.

    Returns:
        The best validation metric and the strategy, for strategy selection and gating.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.train.step import fine_tune_step

    result = fine_tune_step(
        dataset.path, model.path, checkpoint_root=checkpoint_root, nproc_per_node=nproc_per_node,
        base_model=base_model, strategy=strategy, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
        head_learning_rate=head_learning_rate, llrd=llrd, l2sp=l2sp, batch_size=batch_size, max_length=max_length,
        truncation=truncation, long_documents=long_documents, stride=stride,
        aggregation=aggregation, chunk_loss=chunk_loss, image_size=image_size,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, scheduler=scheduler,
        unfreeze_top_layers=unfreeze_top_layers, early_stopping_patience=early_stopping_patience, augment=augment,
        class_weights=class_weights, preserve_source=preserve_source, min_retention=min_retention, seed=seed,
        tuned_options=tuned_options, tuned_config=tuned_config.path if tuned_config else "",
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_target=lora_target, dora=dora,
        lora_scale=lora_scale, quantize_base=quantize_base,
        quantization_aware=quantization_aware, teacher=teacher, student_layers=student_layers,
        distill_alpha=distill_alpha, distill_temperature=distill_temperature, max_new_tokens=max_new_tokens,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    shutil.copyfile(result.report_html, report.path)
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2), encoding="utf-8")
    model.metadata.update(result.metadata)
    outputs = namedtuple("FineTuneOutputs", ["validation_metric", "strategy"])
    return outputs(result.validation_metric, strategy)
