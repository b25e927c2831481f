"""Configuration of the prune step (structured pruning + distillation recovery)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}: {value!r} must be a whole number >= 1 (keeping none is not a model)")


@dataclass
class PruneConfig:
    """What ``transferkit prune`` needs; validated in ``__post_init__`` (``ConfigError`` names the field).

    Exactly one target: ``sparsity``, or one or more of ``keep_layers`` / ``keep_heads`` / ``keep_ffn``.

    Attributes:
        model_dir: Fine-tuned model directory (``transferkit train`` output); also the distillation teacher.
        data_dir: Prepared dataset the model was fine-tuned on (training split: importance and recovery).
        out_dir: Pruned model directory to write (atomically: absent or complete).
        sparsity: Fraction of encoder-layer parameters to remove, in (0, 1).
        keep_layers: Encoder layers to keep (the bottom ones; top layers are dropped).
        keep_heads: Attention heads per layer to keep (must equal the model's: see :mod:`transferkit.prune.structure`).
        keep_ffn: Feed-forward neurons per layer to keep.
        distill_alpha: Weight of the distillation term; the task loss gets ``1 - alpha``.
        distill_temperature: Softmax temperature of the distillation KL.
        recovery_epochs: Epochs of the recovery fine-tune (0: no recovery, the sliced model as is).
        max_steps: Optimizer steps of the recovery fine-tune; overrides ``recovery_epochs``.
        learning_rate: Learning rate of the recovery fine-tune.
        batch_size: Batch size of importance scoring and recovery.
        importance_samples: Training rows scored for importance (seeded sample).
        max_length: Token limit of text models (None: the training run's, else 128).
        seed: Seed of the sample, data order and dropout.
        compare: Also export both models and add the size/latency/accuracy table of {fp32, int8} x {unpruned,
            pruned}, Pareto front marked, to the report (test split; a few minutes on CPU).

    """

    model_dir: Path
    data_dir: Path
    out_dir: Path
    sparsity: float | None = None
    keep_layers: int | None = None
    keep_heads: int | None = None
    keep_ffn: int | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    recovery_epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 5e-5
    batch_size: int = 32
    importance_samples: int = 512
    max_length: int | None = None
    seed: int = 42
    compare: bool = False

    def __post_init__(self) -> None:
        self.model_dir, self.data_dir, self.out_dir = Path(self.model_dir), Path(self.data_dir), Path(self.out_dir)
        keeps = {"keep_layers": self.keep_layers, "keep_heads": self.keep_heads, "keep_ffn": self.keep_ffn}
        for name, value in keeps.items():
            _check_count(name, value)
        given = [name for name, value in keeps.items() if value is not None]
        if self.sparsity is None and not given:
            raise ConfigError("sparsity: give a target: --sparsity or one of --keep-layers/--keep-heads/--keep-ffn")
        if self.sparsity is not None:
            if given:
                raise ConfigError(f"sparsity: give either --sparsity or {'/'.join(given)}, not both")
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float) \
                    or not math.isfinite(self.sparsity) or not 0 < self.sparsity < 1:
                raise ConfigError(f"sparsity: {self.sparsity!r} must be a fraction strictly between 0 and 1")
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"distill_alpha: {self.distill_alpha!r} must be in [0, 1]")
        if not self.distill_temperature > 0 or not math.isfinite(self.distill_temperature):
            raise ConfigError(f"distill_temperature: {self.distill_temperature!r} must be > 0")
        if not self.recovery_epochs >= 0 or not math.isfinite(self.recovery_epochs):
            raise ConfigError(f"recovery_epochs: {self.recovery_epochs!r} must be >= 0")
        _check_count("max_steps", self.max_steps)
        _check_count("batch_size", self.batch_size)
        _check_count("importance_samples", self.importance_samples)
        _check_count("max_length", self.max_length)
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate: {self.learning_rate!r} must be > 0")
        if self.model_dir.absolute() == self.out_dir.absolute():
            raise ConfigError(f"out_dir: {self.out_dir} is the model directory; write the pruned model elsewhere")

    @property
    def recovers(self) -> bool:
        """Whether a recovery fine-tune runs."""
        return self.max_steps is not None or self.recovery_epochs > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
