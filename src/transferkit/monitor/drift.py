"""Two-sample tests of one window of served traffic against the baseline.

- Embedding drift: maximum mean discrepancy (MMD) with an RBF kernel, bandwidth by the median heuristic,
  p-value by permutation. Written here with numpy on purpose: alibi-detect has this test but is now under a
  source-available licence (Business Source License), and evidently 0.7.23 (Apache-2.0) keeps its MMD test only
  in its ``legacy`` API and requires its service/report stack (litestar, uvicorn, plotly, nltk, statsmodels,
  dynaconf, opentelemetry-proto, the iterative-telemetry client, ...) for a ~30-line statistic.
  The permutations are computed together as one matrix product over the pooled kernel.
- Prediction drift: chi-square test of the predicted-class counts (``scipy.stats.chi2_contingency``).
- Confidence drop: one-sided Mann-Whitney U test that window confidences are lower (``scipy.stats``).
- Input drift: two-sample Kolmogorov-Smirnov per scalar input feature (token length, unknown-token rate,
  image width/height/brightness; ``scipy.stats.ks_2samp``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferkit.monitor.config import DriftConfig


@dataclass
class StatResult:
    """One test of one window: its statistic, p-value and whether it passes the corrected threshold."""

    name: str
    statistic: float
    p_value: float
    drift: bool = False


@dataclass
class DriftResult:
    """Every test of one window and the window's verdict."""

    tests: dict[str, StatResult]
    threshold: float
    drift: bool
    mean_confidence: float
    baseline_mean_confidence: float
    prediction_rates: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and reports."""
        return {**asdict(self), "tests": {k: asdict(v) for k, v in self.tests.items()}}


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(sq, 0.0)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Biased MMD^2 between samples ``x`` and ``y`` (RBF kernel, median heuristic) and its permutation p-value.

    Returns:
        ``(mmd2, p_value)`` with ``p = (1 + #{perm >= observed}) / (1 + permutations)``.
    """
    pooled = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(x) + len(y)
    sq = _sq_dists(pooled, pooled)
    off_diagonal = sq[np.triu_indices(total, k=1)]
    median = float(np.median(off_diagonal[off_diagonal > 0])) if np.any(off_diagonal > 0) else 1.0
    kernel = np.exp(-sq / median)
    weights = np.empty((total, permutations + 1))
    base = np.concatenate([np.full(n, 1.0 / n), np.full(total - n, -1.0 / (total - n))])
    weights[:, 0] = base
    for column in range(1, permutations + 1):
        weights[:, column] = rng.permutation(base)
    # a^T K a for every column a at once: MMD^2 (biased) of the observed split and of every permutation.
    stats = np.einsum("ij,ij->j", weights, kernel @ weights)
    observed = float(stats[0])
    p_value = float((1 + np.sum(stats[1:] >= observed - 1e-12)) / (permutations + 1))
    return observed, p_value


def prediction_test(reference: np.ndarray, window: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Chi-square statistic and p-value of the predicted-class counts (classes seen in neither are dropped)."""
    from scipy.stats import chi2_contingency

    table = np.stack([np.bincount(reference, minlength=num_classes), np.bincount(window, minlength=num_classes)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    statistic, p_value, _, _ = chi2_contingency(table)
    return float(statistic), float(p_value)


def confidence_test(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """Mean-confidence drop and the one-sided Mann-Whitney p-value that the window's confidences are lower."""
    from scipy.stats import mannwhitneyu

    drop = float(np.mean(reference) - np.mean(window))
    if np.ptp(np.concatenate([reference, window])) == 0:
        return drop, 1.0
    return drop, float(mannwhitneyu(window, reference, alternative="less").pvalue)


def feature_test(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and p-value of one scalar feature."""
    from scipy.stats import ks_2samp

    if np.ptp(np.concatenate([reference, window])) == 0:
        return 0.0, 1.0
    result = ks_2samp(reference, window)
    return float(result.statistic), float(result.pvalue)


def check_window(baseline: Any, window: dict[str, np.ndarray], config: DriftConfig, seed: int = 0) -> DriftResult:
    """Run every test of one window against the baseline.

    Args:
        baseline: A :class:`transferkit.monitor.baseline.Baseline`.
        window: ``embeddings`` ``[m, d]``, ``predictions`` ``[m]`` (class ids), ``confidences`` ``[m]`` and one
            ``[m]`` array per baseline feature name.
        config: Test settings.
        seed: Added to ``config.seed`` (one stream per window).
    """
    rng = np.random.default_rng(config.seed + seed)
    reference = baseline.embeddings
    if len(reference) > config.max_reference:
        reference = reference[rng.choice(len(reference), config.max_reference, replace=False)]
    features = [name for name in baseline.features if name in window]
    threshold = config.alpha / (3 + len(features))
    tests: dict[str, StatResult] = {}
    tests["embedding_mmd"] = StatResult("embedding_mmd", *mmd_test(reference, window["embeddings"],
                                                                    config.permutations, rng))
    num_classes = len(baseline.labels)
    tests["prediction_chi2"] = StatResult("prediction_chi2", *prediction_test(
        baseline.predictions, window["predictions"].astype(np.int64), num_classes))
    drop, p_value = confidence_test(baseline.confidences, window["confidences"])
    tests["confidence_drop"] = StatResult("confidence_drop", drop, p_value)
    for name in features:
        tests[f"{name}_ks"] = StatResult(f"{name}_ks", *feature_test(baseline.features[name], window[name]))
    for name, test in tests.items():
        test.drift = test.p_value < threshold
        if name == "confidence_drop":
            test.drift = test.drift and test.statistic >= config.confidence_drop
    counts = np.bincount(window["predictions"].astype(np.int64), minlength=num_classes)
    rates = {label: float(c) / max(1, counts.sum()) for label, c in zip(baseline.labels, counts, strict=True)}
    return DriftResult(tests=tests, threshold=threshold, drift=any(t.drift for t in tests.values()),
                       mean_confidence=float(np.mean(window["confidences"])),
                       baseline_mean_confidence=float(np.mean(baseline.confidences)), prediction_rates=rates)
