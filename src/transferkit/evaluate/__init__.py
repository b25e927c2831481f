"""Evaluate step and forgetting check: metrics, slices, calibration, reports, and the forgetting gate.

Public API:
    - :func:`evaluate_model` with :class:`EvaluateConfig` -> :class:`EvaluateResult`
    - :func:`check_forgetting` with :class:`ForgettingConfig` -> :class:`ForgettingResult`
"""

from transferkit.evaluate.evaluation import EvaluateConfig, EvaluateResult, evaluate_model
from transferkit.evaluate.forgetting import ForgettingConfig, ForgettingResult, check_forgetting

__all__ = [
    "EvaluateConfig",
    "EvaluateResult",
    "ForgettingConfig",
    "ForgettingResult",
    "check_forgetting",
    "evaluate_model",
]
