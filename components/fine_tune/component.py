"""KFP component: fine-tune a base model on a prepared dataset with a transfer strategy."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

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
    seed: int = 42,
    checkpoint_root: str = "",
    nproc_per_node: int = 1,
) -> NamedTuple("FineTuneOutputs", [("validation_metric", float), ("strategy", str)]):
    """Fine-tune ``base_model``; zero/negative numeric options and "" mean "the catalog default".

    Args:
        preserve_source: Apply the forgetting mitigation (text models; skipped for image data).
        checkpoint_root: Directory on a PVC for checkpoints; a retried task resumes from
            ``<checkpoint_root>/<digest of its inputs>``. "" keeps checkpoints next to the output.
        nproc_per_node: Training processes on this node (one per GPU) launched with torchrun.

    Returns:
        The best validation metric and the strategy, for strategy selection and gating.
    """
    import dataclasses
    import hashlib
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.train import TrainConfig, config_to_cli_args, run_training
    from transferkit.train.distributed import launch_torchrun

    is_image = json.loads((Path(dataset.path) / "schema.json").read_text(encoding="utf-8")).get(
        "task") == "image-classification"
    config = TrainConfig(
        data_dir=Path(dataset.path), model=base_model, strategy=strategy, out_dir=Path(model.path),
        epochs=epochs or None, max_steps=max_steps or None, learning_rate=learning_rate or None,
        head_learning_rate=head_learning_rate or None, llrd=llrd, l2sp=l2sp, batch_size=batch_size or None,
        max_length=max_length or None, image_size=image_size or None,
        warmup_ratio=None if warmup_ratio < 0 else warmup_ratio,
        weight_decay=None if weight_decay < 0 else weight_decay, scheduler=scheduler or None,
        unfreeze_top_layers=unfreeze_top_layers, early_stopping_patience=early_stopping_patience,
        augment=augment, class_weights=class_weights, preserve_source=preserve_source and not is_image,
        min_retention=min_retention, seed=seed,
    )
    if checkpoint_root:
        # A retry of this task has the same inputs and output path, hence the same digest: it resumes.
        digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
        config = dataclasses.replace(config, checkpoint_dir=Path(checkpoint_root) / digest[:16])
    if nproc_per_node > 1:
        launch_torchrun(config_to_cli_args(config), nproc_per_node)
    else:
        run_training(config)
    out = Path(model.path)
    summary = json.loads((out / "training_summary.json").read_text(encoding="utf-8"))
    best = summary["best"]["value"]
    for name, value in summary["validation"].items():
        if isinstance(value, int | float):
            metrics.log_metric(f"validation_{name}", float(value))
    metrics.log_metric("wall_time_s", float(summary["wall_time_s"]))
    metrics.log_metric("trainable_params", float(summary["parameters"]["trainable"]))
    shutil.copyfile(out / summary["artifacts"]["report_html"], report.path)
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2), encoding="utf-8")
    framework = "pytorch" if is_image else "transformers"
    model.metadata.update({"strategy": strategy, "base_model": base_model, "framework": framework})
    outputs = namedtuple("FineTuneOutputs", ["validation_metric", "strategy"])
    return outputs(float(best if best is not None else 0.0), strategy)
