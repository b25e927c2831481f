"""``transferkit prune``: importance-scored structured pruning, then a distillation recovery fine-tune.

The input is a fine-tuned model directory and the prepared dataset it was trained on. The output is a normal
model directory (weights, a config with the new shapes, tokenizer/processor, ``labels.json``, the source's
``training_summary.json`` with a ``pruning`` entry) plus ``prune_summary.json`` and ``prune_report.{md,html}``,
so evaluate, forgetting, export and deploy read it like any other model. Data and model loading go through the
task's training side (:meth:`transferkit.tasks.base.Task.training`), so the step has no text/image branches.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ModelError
from transferkit.io import atomic_output_dir, write_json
from transferkit.prune.config import PruneConfig
from transferkit.prune.structure import PrunePlan, apply_plan, encoder_layout, ffn_importance, plan_pruning

logger = logging.getLogger(__name__)

SUMMARY_FILE = "prune_summary.json"
RELOAD_ATOL = 1e-4


@dataclass
class PruneResult:
    """What the prune step did and measured.

    Attributes:
        out_dir: The pruned model directory.
        plan: Shapes kept and parameter counts of the prunable encoder layers.
        parameters_before: All parameters of the unpruned model.
        parameters_after: All parameters of the pruned model.
        validation_before: Validation metrics of the unpruned model (reloaded from disk).
        validation_after: Validation metrics of the pruned model (reloaded from disk).
        recovery: Training metrics of the recovery fine-tune (empty when none ran).
        seconds: Wall time of importance scoring, recovery and the whole step.
        report_html: The HTML report.
        variants: Size/latency/accuracy of {fp32, int8} x {unpruned, pruned} with Pareto membership (``compare``).
    """

    out_dir: Path
    plan: dict[str, Any]
    parameters_before: int
    parameters_after: int
    validation_before: dict[str, float]
    validation_after: dict[str, float]
    recovery: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report_html: Path | None = None
    variants: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kept_parameter_fraction(self) -> float:
        """Fraction of the prunable encoder parameters kept."""
        return self.plan["encoder_parameters_after"] / max(self.plan["encoder_parameters_before"], 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["report_html"] = None if self.report_html is None else str(self.report_html)
        data["kept_parameter_fraction"] = self.kept_parameter_fraction
        return data


def _model_labels(model_dir: Path) -> list[str]:
    path = model_dir / "labels.json"
    if path.is_file():
        return list(json.loads(path.read_text(encoding="utf-8")))
    config = model_dir / "config.json"
    if not config.is_file():
        raise ModelError(f"model_dir: {model_dir} has no config.json; expected a `transferkit train` output directory")
    id2label = json.loads(config.read_text(encoding="utf-8")).get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def _train_config(config: PruneConfig, labels_dir: Path) -> Any:
    """The fine-tune configuration whose task side loads this model and data (nothing is trained with it)."""
    from transferkit.train.config import TrainConfig

    max_length = config.max_length
    summary = config.model_dir / "training_summary.json"
    if max_length is None and summary.is_file():
        value = (json.loads(summary.read_text(encoding="utf-8")).get("resolved") or {}).get("max_length")
        max_length = value if isinstance(value, int) and value > 1 else None
    return TrainConfig(data_dir=config.data_dir, model=str(config.model_dir), strategy="full",
                       out_dir=labels_dir, max_length=max_length, batch_size=config.batch_size, seed=config.seed)


def _sample_loader(train_ds: Any, collator: Any, config: PruneConfig) -> Any:
    import torch
    from torch.utils.data import DataLoader, Subset

    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train_ds), generator=generator)[:config.importance_samples].tolist()
    return DataLoader(Subset(train_ds, order), batch_size=config.batch_size, collate_fn=collator)


def _check_reload(model: Any, directory: Path, batch: dict[str, Any]) -> float:
    """Reload the saved directory with ``from_pretrained`` and compare logits with the in-memory model.

    Raises:
        ModelError: The directory does not reload into the same function (its config misdescribes the shapes).
    """
    import torch

    try:
        reloaded = type(model).from_pretrained(directory).eval()
    except Exception as exc:
        raise ModelError(f"{directory}: the pruned model does not reload ({type(exc).__name__}: {exc})") from exc
    features = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        diff = float((model.eval()(**features).logits - reloaded(**features).logits).abs().max())
    if diff > RELOAD_ATOL:
        raise ModelError(f"{directory}: the reloaded pruned model differs from the pruned model by {diff:.3g}")
    return diff


def prune_model(config: PruneConfig) -> PruneResult:
    """Prune a fine-tuned model to the target, recover it by distillation and write a model directory.

    Raises:
        ConfigError: A target the model cannot take (more layers/neurons than it has, fewer heads, a sparsity
            out of reach).
        ModelError: A model kind that cannot be pruned, labels that differ from the data's, or a result that does
            not reload.
        PreparedDataError: The dataset is unusable.

    """
    from transferkit.data.prepared import load_prepared
    from transferkit.prune.distill import recover
    from transferkit.prune.report import write_prune_report
    from transferkit.train.run import setup_run
    from transferkit.train.side import interactive

    started = time.perf_counter()
    dataset = load_prepared(config.data_dir)
    teacher_labels = _model_labels(config.model_dir)
    if teacher_labels != list(dataset.labels):
        raise ModelError(f"model_dir: {config.model_dir / 'labels.json'} has labels {teacher_labels}; the data in "
                         f"{config.data_dir} has {list(dataset.labels)}: prune with the data the model was trained on")
    ctx = setup_run(_train_config(config, config.out_dir))
    side = ctx.side
    side.start_training(ctx)
    teacher = side.build_model(ctx).eval()
    student = copy.deepcopy(teacher)
    layout = encoder_layout(student, str(config.model_dir))
    plan: PrunePlan = plan_pruning(layout, sparsity=config.sparsity, keep_layers=config.keep_layers,
                                   keep_heads=config.keep_heads, keep_ffn=config.keep_ffn)
    train_ds, _ = side.datasets(ctx)
    collator = side.collator("cpu")
    loader = _sample_loader(train_ds, collator, config)
    scored = time.perf_counter()
    importance = ffn_importance(student, layout, loader, progress=interactive())
    seconds = {"importance": round(time.perf_counter() - scored, 2)}
    apply_plan(student, layout, plan, importance)
    parameters_before = sum(p.numel() for p in teacher.parameters())
    parameters_after = sum(p.numel() for p in student.parameters())
    recovery: dict[str, Any] = {}
    with atomic_output_dir(config.out_dir, owned_files=(SUMMARY_FILE,)) as tmp:
        if config.recovers:
            recovered = time.perf_counter()
            work = tmp / ".trainer"
            recovery = recover(student, teacher, train_ds, collator, work, alpha=config.distill_alpha,
                               temperature=config.distill_temperature, learning_rate=config.learning_rate,
                               batch_size=config.batch_size, epochs=config.recovery_epochs,
                               max_steps=config.max_steps, seed=config.seed,
                               train_lengths=side.train_lengths(train_ds))
            shutil.rmtree(work, ignore_errors=True)
            seconds["recovery"] = round(time.perf_counter() - recovered, 2)
        side.save(tmp, student, ctx.labels)
        reload_diff = _check_reload(student, tmp, next(iter(loader)))
        validation_before = side.validation_metrics(ctx, config.model_dir)
        validation_after = side.validation_metrics(ctx, tmp)
        seconds["total"] = round(time.perf_counter() - started, 2)
        plan_dict = asdict(plan)
        result = PruneResult(config.out_dir, plan_dict, parameters_before, parameters_after,
                             validation_before, validation_after, recovery, seconds)
        summary_src = config.model_dir / "training_summary.json"
        summary = json.loads(summary_src.read_text(encoding="utf-8")) if summary_src.is_file() else {}
        summary["pruning"] = {"source": str(config.model_dir), "plan": plan_dict,
                              "kept_parameter_fraction": result.kept_parameter_fraction}
        write_json(tmp / "training_summary.json", summary)
        variants = None
        if config.compare:
            from transferkit.prune.compare import compare_variants
            from transferkit.prune.report import pareto_front

            variants = compare_variants(config.model_dir, tmp, config.data_dir)
            front = pareto_front(variants)
            result.variants = [{**asdict(v), "pareto": v.name in front} for v in variants]
        write_prune_report(tmp, result, config, variants)
        write_json(tmp / SUMMARY_FILE, {**result.to_dict(), "config": config.to_dict(),
                                        "reload_max_abs_diff": reload_diff})
    result.report_html = config.out_dir / "prune_report.html"
    logger.info("Pruned model written to %s: %.1f%% of encoder parameters kept, validation accuracy %.2f%% -> %.2f%%",
                config.out_dir, 100 * result.kept_parameter_fraction,
                100 * validation_before.get("accuracy", float("nan")),
                100 * validation_after.get("accuracy", float("nan")))
    return result
