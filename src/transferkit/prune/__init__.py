"""Structured pruning with distillation recovery (``transferkit prune``)."""

from transferkit.prune.config import PruneConfig
from transferkit.prune.step import PruneResult, prune_model

__all__ = ["PruneConfig", "PruneResult", "prune_model"]
