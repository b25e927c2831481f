"""Strategy ``distill``: a smaller student learns from a fine-tuned teacher on the target data.

The student is the base model (``--model``) with only its bottom ``student_layers`` encoder layers and a new
head; the teacher is a fine-tuned model directory (``--teacher``) with the data's labels. The loss is the one of
the prune step's recovery fine-tune (:class:`transferkit.prune.distill.DistillTrainer`): ``alpha * T^2 *
KL(teacher / T || student / T) + (1 - alpha) * task loss``. Everything else (schedule, checkpoints, evaluation,
outputs) is the fine-tune recipe's, so the result is a normal model directory whose config holds the new depth.

Layers are cut with the prune step's slicing (:mod:`transferkit.prune.structure`), which keeps transferkit's fixed
mean-pooling layer last; loading goes through the task's training side, so nothing here branches on the task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, ModelError, TransferkitError

logger = logging.getLogger(__name__)

POOLING_MARKER = "transferkit_mean_pooling_layer"


def model_labels(model_dir: Path, config: dict[str, Any]) -> list[str]:
    """Label names of a model directory: ``labels.json``, else the config's ``id2label`` (in id order).

    Raises:
        ModelError: ``labels.json`` is not a list of names.

    """
    path = model_dir / "labels.json"
    if path.is_file():
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"teacher: {path} is not valid JSON ({exc})") from exc
        if not isinstance(labels, list):
            raise ModelError(f"teacher: {path} must hold a list of label names")
        return [str(name) for name in labels]
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _read_teacher_config(teacher: Path) -> dict[str, Any]:
    if not teacher.is_dir():
        raise ModelError(f"teacher: {teacher} is not a directory; expected a fine-tuned model directory "
                         "(the --out of transferkit train)")
    path = teacher / "config.json"
    if not path.is_file():
        raise ModelError(f"teacher: {teacher} has no config.json; expected a fine-tuned model directory "
                         "(the --out of transferkit train)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"teacher: {path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"teacher: {path} has no model_type; expected a transformers model configuration")
    return config


def base_layer_count(resolved: Any) -> int | None:
    """Encoder layers of the base (its fixed pooling layer not counted), or None when it has no layer stack."""
    layers = resolved.config.get("num_hidden_layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or not isinstance(
            resolved.config.get("intermediate_size"), int):
        return None
    return layers - (1 if resolved.config.get(POOLING_MARKER) is not None else 0)


def check_distill(config: Any, dataset: Any, resolved: Any) -> int:
    """Check the teacher and the student's depth before anything is loaded; return the student's layer count.

    Raises:
        ModelError: The teacher is not a model directory, has other labels than the data, reads other inputs
            (vocabulary size) than the base, or the base has no encoder layers to keep.
        ConfigError: ``student_layers`` is not below the base's layer count.

    """
    teacher = Path(config.teacher)
    teacher_config = _read_teacher_config(teacher)
    labels, data_labels = model_labels(teacher, teacher_config), list(dataset.labels)
    if labels != data_labels:
        raise ModelError(f"teacher: {teacher} has labels {labels}; the data in {dataset.path} has {data_labels}: "
                         "distill from a teacher fine-tuned on these labels")
    vocab, base_vocab = teacher_config.get("vocab_size"), resolved.config.get("vocab_size")
    if vocab is not None and base_vocab is not None and vocab != base_vocab:
        raise ModelError(f"teacher: {teacher} has a vocabulary of {vocab} tokens, the base {resolved.reference} of "
                         f"{base_vocab}: teacher and student must read the same inputs (fine-tune the teacher from "
                         "the same model family)")
    layers = base_layer_count(resolved)
    if layers is None:
        raise ModelError(f"model: {resolved.reference} ({resolved.model_type}) has no transformer encoder layers; "
                         "strategy distill keeps the bottom layers of a BERT/ViT-family encoder as the student")
    student = config.student_layers if config.student_layers is not None else max(1, layers // 2)
    if student >= layers:
        raise ConfigError(f"student_layers: {student} must be fewer than the {layers} encoder layers of "
                          f"{resolved.reference} (the student keeps the bottom k layers)")
    return student


def make_student(model: Any, student_layers: int, where: str) -> dict[str, Any]:
    """Cut ``model`` in place to its bottom ``student_layers`` encoder layers; return what was kept.

    Raises:
        ModelError: The model has no BERT/ViT-style encoder layers.

    """
    from transferkit.prune.structure import PrunePlan, apply_plan, encoder_layout, encoder_parameter_count

    before = sum(p.numel() for p in model.parameters())
    try:
        layout = encoder_layout(model, where)
    except ModelError as exc:
        raise ModelError(f"model: strategy distill keeps the bottom layers of a transformer encoder; "
                         f"{str(exc).split(': ', 1)[-1]}") from exc
    base_layers = len(layout.prunable)
    plan = PrunePlan(student_layers, layout.intermediate_size, layout.num_heads,
                     encoder_parameter_count(layout), encoder_parameter_count(layout, student_layers))
    apply_plan(model, layout, plan, None)
    after = sum(p.numel() for p in model.parameters())
    logger.info("Student: the bottom %d of %d encoder layers of %s (%d -> %d parameters)", student_layers,
                base_layers, where, before, after)
    return {"student_layers": student_layers, "base_layers": base_layers, "base_parameters": before,
            "student_parameters": after}


def load_teacher(ctx: Any) -> Any:
    """The teacher, loaded by the task's training side like a base model whose head already fits (eval mode).

    Raises:
        TransferkitError: The teacher does not load (the error's own class, its message prefixed ``teacher:``).

    """
    from dataclasses import replace

    from transferkit.train.run import setup_run

    config = ctx.config
    summary = Path(config.teacher) / "training_summary.json"
    max_length = None
    if summary.is_file():
        try:
            value = (json.loads(summary.read_text(encoding="utf-8")).get("resolved") or {}).get("max_length")
        except ValueError:
            value = None
        max_length = value if isinstance(value, int) and value > 2 else None
    teacher_config = replace(config, model=str(config.teacher), strategy="full", teacher=None, student_layers=None,
                             distill_alpha=0.5, distill_temperature=2.0, max_length=max_length, l2sp=0.0,
                             preserve_source=False, pooling="auto", checkpoint_dir=None)
    try:
        teacher_ctx = setup_run(teacher_config)
        teacher_ctx.side.start_training(teacher_ctx)
        teacher = teacher_ctx.side.build_model(teacher_ctx).eval()
    except TransferkitError as exc:
        if str(exc).startswith("teacher:"):
            raise
        raise type(exc)(f"teacher: {exc}") from exc
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
