"""Trainer callbacks: checkpoint sealing, overfitting warnings, epoch timing, logging, quiet progress."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from transferkit.train.checkpoints import write_manifest
from transferkit.train.diagnostics import curves_from_history, detect_overfitting, overfitting_message

logger = logging.getLogger(__name__)


class ManifestCallback(TrainerCallback):
    """Write the integrity manifest of each checkpoint once every rank has finished writing it."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Seal ``checkpoint-<global_step>`` (after a barrier when distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_manifest(checkpoint)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()


class OverfittingWarningCallback(TrainerCallback):
    """Log a warning as soon as an overfitting episode appears (once per episode)."""

    def __init__(self) -> None:
        self.warned: set[int] = set()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check the history after each evaluation."""
        if not state.is_world_process_zero:
            return
        for episode in detect_overfitting(curves_from_history(state.log_history)):
            if episode["to_step"] not in self.warned:
                self.warned.add(episode["to_step"])
                logger.warning(overfitting_message(episode))


class EpochTimerCallback(TrainerCallback):
    """Wall time of each epoch (from the previous epoch's end), for throughput and benchmarks."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self._last: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the clock."""
        self._last = time.perf_counter()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record the epoch's duration."""
        now = time.perf_counter()
        if self._last is not None:
            self.epoch_seconds.append(now - self._last)
        self._last = now


class LoggingCallback(TrainerCallback):
    """Send Trainer logs to ``logging`` (stdout stays clean for ``--json``): evaluations at INFO, steps at DEBUG.

    Replaces the Trainer's ``PrinterCallback``, which prints every log dict to stdout.
    """

    def __init__(self, every: int = 50) -> None:
        self.every = max(1, every)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Log one line per entry."""
        if not state.is_world_process_zero or not logs:
            return
        text = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()
            if not k.endswith(("_runtime", "_per_second")) or k == "train_samples_per_second"
        )
        is_eval = any(k.startswith("eval_") for k in logs)
        is_summary = "train_runtime" in logs
        level = logging.INFO if is_eval or is_summary or state.global_step % self.every == 0 else logging.DEBUG
        logger.log(level, "step %d/%d: %s", state.global_step, state.max_steps, text)


class QuietProgressCallback(ProgressCallback):
    """The Trainer's tqdm progress bars (stderr) without its printing of every log dict."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Logs are reported by :class:`LoggingCallback`."""
