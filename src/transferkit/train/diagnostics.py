"""Training diagnostics: curves from the Trainer's log history and overfitting detection.

Everything is derived from ``TrainerState.log_history``, which the Trainer checkpoints, so a resumed run
reports the same curves and warnings as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

OVERFIT_WINDOW = 3


@dataclass
class Curves:
    """Per-step training curves and per-evaluation validation curves."""

    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    grad_norm_steps: list[int] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr_steps: list[int] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return {
            "train": {"step": self.train_steps, "loss": self.train_loss},
            "grad_norm": {"step": self.grad_norm_steps, "value": self.grad_norm},
            "learning_rate": {"step": self.lr_steps, "value": self.learning_rate},
            "eval": {"step": self.eval_steps, **self.eval_metrics},
        }


def curves_from_history(history: list[dict[str, Any]]) -> Curves:
    """Extract curves from ``trainer.state.log_history`` (later entries for a step win after a resume)."""
    train: dict[int, float] = {}
    grad: dict[int, float] = {}
    lr: dict[int, float] = {}
    evals: dict[int, dict[str, float]] = {}
    for entry in history:
        step = int(entry.get("step", 0))
        if "loss" in entry:
            train[step] = float(entry["loss"])
        if "grad_norm" in entry and entry["grad_norm"] is not None and math.isfinite(float(entry["grad_norm"])):
            grad[step] = float(entry["grad_norm"])
        if "learning_rate" in entry:
            lr[step] = float(entry["learning_rate"])
        if "eval_loss" in entry:
            evals[step] = {k[5:]: float(v) for k, v in entry.items()
                           if k.startswith("eval_") and isinstance(v, int | float) and not k.endswith(
                               ("_runtime", "_per_second"))}
    curves = Curves()
    curves.train_steps = sorted(train)
    curves.train_loss = [train[s] for s in curves.train_steps]
    curves.grad_norm_steps = sorted(grad)
    curves.grad_norm = [grad[s] for s in curves.grad_norm_steps]
    curves.lr_steps = sorted(lr)
    curves.learning_rate = [lr[s] for s in curves.lr_steps]
    curves.eval_steps = sorted(evals)
    names = sorted({k for m in evals.values() for k in m})
    curves.eval_metrics = {n: [evals[s].get(n, math.nan) for s in curves.eval_steps] for n in names}
    return curves


def detect_overfitting(curves: Curves, window: int = OVERFIT_WINDOW) -> list[dict[str, Any]]:
    """Find runs of ``window`` consecutive evaluations where validation loss rose while training loss fell.

    Training loss per evaluation is the mean of the logged training losses since the previous evaluation.

    Returns:
        One dict per detected episode: ``{"from_step", "to_step", "eval_loss", "train_loss"}``.

    """
    eval_loss = curves.eval_metrics.get("loss", [])
    if len(eval_loss) < window + 1:
        return []
    train_means: list[float] = []
    previous = -1
    for step in curves.eval_steps:
        losses = [loss for s, loss in zip(curves.train_steps, curves.train_loss, strict=True) if previous < s <= step]
        train_means.append(sum(losses) / len(losses) if losses else math.nan)
        previous = step
    episodes: list[dict[str, Any]] = []
    streak = 0
    for i in range(1, len(eval_loss)):
        rising = eval_loss[i] > eval_loss[i - 1]
        falling = train_means[i] < train_means[i - 1]
        streak = streak + 1 if rising and falling else 0
        if streak == window:
            start = i - window
            episodes.append({
                "from_step": curves.eval_steps[start], "to_step": curves.eval_steps[i],
                "eval_loss": [eval_loss[start], eval_loss[i]], "train_loss": [train_means[start], train_means[i]],
            })
    return episodes


def overfitting_message(episode: dict[str, Any]) -> str:
    """One-line warning text for an overfitting episode."""
    return (
        f"possible overfitting: validation loss rose {episode['eval_loss'][0]:.4f} -> {episode['eval_loss'][1]:.4f} "
        f"while training loss fell {episode['train_loss'][0]:.4f} -> {episode['train_loss'][1]:.4f} over "
        f"{OVERFIT_WINDOW} evaluations (steps {episode['from_step']}-{episode['to_step']}); consider early "
        "stopping, a lower learning rate, --l2sp or augmentation"
    )
