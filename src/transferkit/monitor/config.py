"""Typed settings of the drift monitor (validated on construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transferkit.errors import ConfigError


@dataclass(frozen=True)
class DriftConfig:
    """How windows of served traffic are tested against the baseline.

    Attributes:
        window_size: Sampled records per window; a window is tested when it is full.
        alpha: Family-wise false-alarm rate per window. Every test of a window is held to
            ``alpha / number_of_tests`` (Bonferroni), so a window alarms at most ``alpha`` of the time on
            in-distribution traffic.
        permutations: Permutations of the MMD test (the smallest p-value is ``1 / (permutations + 1)``).
        max_reference: Baseline embeddings used per MMD test (a seeded subsample keeps the kernel small).
        confidence_drop: Mean-confidence drop (absolute) reported as a ``confidence_drop`` alarm only when the
            one-sided test is also significant.
        seed: Seed of the permutations and subsamples.
    """

    window_size: int = 200
    alpha: float = 0.05
    permutations: int = 500
    max_reference: int = 500
    confidence_drop: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window_size < 10:
            raise ConfigError(f"window_size: expected an integer >= 10, got {self.window_size}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha: expected a probability in (0, 1), got {self.alpha}")
        if self.permutations < 20:
            raise ConfigError(f"permutations: expected an integer >= 20, got {self.permutations}")
        if self.max_reference < 10:
            raise ConfigError(f"max_reference: expected an integer >= 10, got {self.max_reference}")
        if not 0.0 <= self.confidence_drop < 1.0:
            raise ConfigError(f"confidence_drop: expected a value in [0, 1), got {self.confidence_drop}")
        if 1.0 / (self.permutations + 1) >= self.alpha / 8:
            raise ConfigError(f"permutations: {self.permutations} permutations cannot reach a p-value below "
                              f"alpha/8 = {self.alpha / 8:g}; expected at least {int(8 / self.alpha)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for reports and JSON."""
        return asdict(self)
