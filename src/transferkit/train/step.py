"""The fine-tune step as a pipeline component runs it: parameters in, one call, metrics and outputs back.

``components/fine_tune`` passes its typed parameters to :func:`fine_tune_step` and only translates the result
into KFP outputs. KFP parameters cannot be None: each TrainConfig option declares the value meaning "the catalog
default" (``kfp_unset``, read by :func:`config_from_parameters`); the retry digest, the torchrun launch and the
reading of ``training_summary.json`` live here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import TrainingError
from transferkit.options import from_kfp_parameters
from transferkit.tasks import get_task
from transferkit.train.config import (
    DISTILL_DEFAULTS,
    LORA_DEFAULTS,
    QUANTIZATION_AWARE_STRATEGIES,
    TrainConfig,
    config_to_cli_args,
)
from transferkit.train.outputs import SUMMARY_FILE


@dataclass
class FineTuneStepResult:
    """What the component reports.

    Attributes:
        validation_metric: Best validation value of the selection metric (0.0 when undefined).
        metrics: Scalar KFP metrics (``validation_*``, ``wall_time_s``, ``trainable_params``).
        report_html: The training report in the model directory.
        metadata: Model artifact metadata (``strategy``, ``base_model``, ``framework``).
    """

    validation_metric: float
    metrics: dict[str, float] = field(default_factory=dict)
    report_html: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def config_from_parameters(data_dir: str | Path, out_dir: str | Path, parameters: dict[str, Any]) -> TrainConfig:
    """Build the :class:`TrainConfig` of component parameters (sentinels mean "the catalog default").

    ``preserve_source`` is dropped for tasks without a forgetting mitigation (image data), so one pipeline
    definition serves every task, for decoder bases (measured by perplexity, not by the similarity skill
    the mitigation keeps) and for strategy ``distill`` (its student is shallower than the base); likewise a
    strategy sweep (``["lora", "full"]``) passes the LoRA options to strategy ``lora`` only, the distillation
    options (``teacher``, ``student_layers``...) to strategy ``distill`` only, ``quantization_aware`` to the
    strategies that train the weights the export quantizes (``lora``, ``full``), and ``l2sp`` (meaningless on a
    frozen base) to every strategy but ``lora``.
    ``tuned_options`` (JSON train options, "" for none) and then ``tuned_config`` (the path of the tune step's
    ``best_config`` artifact) override the other parameters.

    Raises:
        ConfigError: An invalid option (from :class:`TrainConfig`).
        PreparedDataError: ``data_dir`` names an unknown task.

    """
    from transferkit.tune.step import parse_tuned_options, read_tuned_config

    values = dict(parameters)
    tuned = parse_tuned_options(str(values.pop("tuned_options", "") or ""))
    tuned.update(read_tuned_config(str(values.pop("tuned_config", "") or "")))
    values["model"] = values.pop("base_model")
    values = from_kfp_parameters(TrainConfig, values)
    # The tune step's best options win over the component's own parameters (the sweep's strategy is kept).
    values.update(tuned)
    task = get_task(Path(data_dir))
    values["preserve_source"] = bool(values.get("preserve_source")) and task.forgetting_mitigation
    if values["preserve_source"] and _is_decoder(str(values["model"])):
        # The mitigation keeps an encoder's similarity skill; decoders are measured by perplexity instead.
        values["preserve_source"] = False
    if values.get("strategy") == "distill":
        values["preserve_source"] = False  # the mitigation interpolates layer by layer; the student is shallower
    if values.get("strategy") == "lora":
        values.pop("l2sp", None)
    else:
        for name in LORA_DEFAULTS:
            values.pop(name, None)
    if values.get("strategy") not in QUANTIZATION_AWARE_STRATEGIES:
        values.pop("quantization_aware", None)
    if values.get("strategy") != "distill":
        for name in DISTILL_DEFAULTS:
            values.pop(name, None)
    return TrainConfig(data_dir=Path(data_dir), out_dir=Path(out_dir), **values)


def _is_decoder(model: str) -> bool:
    from transferkit.evaluate.forgetting_lm import DECODER_MODEL_TYPES
    from transferkit.models.catalog import resolve_model

    return resolve_model(model).model_type in DECODER_MODEL_TYPES


def fine_tune_step(data_dir: str | Path, out_dir: str | Path, *, checkpoint_root: str = "", nproc_per_node: int = 1,
                   **parameters: Any) -> FineTuneStepResult:
    """Train as the pipeline does: resume a retried task from its checkpoint, launch torchrun if asked.

    Args:
        data_dir: The prepared dataset.
        out_dir: The model directory to write.
        checkpoint_root: Directory on a PVC for checkpoints; a retried task resumes from
            ``<checkpoint_root>/<digest of its configuration>``. "" keeps checkpoints next to the output.
        nproc_per_node: Training processes on this node, launched with torchrun when above 1.
        **parameters: The component's training parameters (``base_model``, ``strategy``, ``epochs``...).

    Raises:
        TrainingError: Training failed or wrote no ``training_summary.json``.

    """
    from transferkit.train.distributed import launch_torchrun
    from transferkit.train.run import run_training

    config = config_from_parameters(data_dir, out_dir, parameters)
    if checkpoint_root:
        # A retry of this task has the same inputs and output path, hence the same digest: it resumes.
        digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
        config = dataclasses.replace(config, checkpoint_dir=Path(checkpoint_root) / digest[:16])
    if nproc_per_node > 1:
        launch_torchrun(config_to_cli_args(config), nproc_per_node)
    else:
        run_training(config)
    return read_step_result(config)


def read_step_result(config: TrainConfig) -> FineTuneStepResult:
    """The component's outputs from the written ``training_summary.json``.

    Raises:
        TrainingError: The summary is missing or unreadable.

    """
    out = Path(config.out_dir)
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{out / SUMMARY_FILE}: no readable training summary ({exc})") from exc
    metrics = {f"validation_{name}": float(value) for name, value in summary["validation"].items()
               if isinstance(value, int | float)}
    metrics["wall_time_s"] = float(summary["wall_time_s"])
    metrics["trainable_params"] = float(summary["parameters"]["trainable"])
    best = summary["best"]["value"]
    task = get_task(config.data_dir)
    return FineTuneStepResult(
        validation_metric=float(best if best is not None else 0.0), metrics=metrics,
        report_html=out / summary["artifacts"]["report_html"],
        metadata={"strategy": config.strategy, "base_model": config.model, "framework": task.model_framework},
    )
