"""Fine-tuning: transfer strategies, optimizer/LR groups, callbacks, checkpoint/resume, distributed launch.

Entry point: :func:`run_training` with a :class:`TrainConfig`, returning a :class:`TrainResult`.
Heavy dependencies (torch, transformers) are imported only when training runs.
"""

from transferkit.train.config import STRATEGIES, TrainConfig, config_to_cli_args
from transferkit.train.run import TrainResult, run_training

__all__ = ["STRATEGIES", "TrainConfig", "TrainResult", "config_to_cli_args", "run_training"]
