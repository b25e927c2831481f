"""The drift tests: calibrated under the null, powerful under shift, typed config errors."""

import numpy as np
import pytest

from transferkit.errors import ConfigError, MonitorError
from transferkit.monitor.baseline import Baseline
from transferkit.monitor.config import DriftConfig
from transferkit.monitor.drift import check_window, confidence_test, feature_test, mmd_test, prediction_test


def _baseline(rng, n=300, dim=16):
    embeddings = rng.normal(size=(n, dim)).astype(np.float32)
    return Baseline(["negative", "positive"], embeddings, rng.integers(0, 2, n), rng.uniform(0.6, 1.0, n),
                    {"length": rng.poisson(20, n).astype(float)}, {"split": "validation"})


def test_mmd_null_is_calibrated_and_shift_is_detected():
    rng = np.random.default_rng(0)
    null_p = [mmd_test(rng.normal(size=(120, 8)), rng.normal(size=(60, 8)), 99, rng)[1] for _ in range(40)]
    # Permutation p-values are (super-)uniform under the null: few below 0.05.
    assert np.mean(np.asarray(null_p) < 0.05) <= 0.15
    assert min(null_p) >= 1 / 100
    shifted = rng.normal(size=(60, 8)) + np.r_[0.8, np.zeros(7)]
    mmd2, p = mmd_test(rng.normal(size=(120, 8)), shifted, 199, rng)
    assert p == pytest.approx(1 / 200) and mmd2 > 0


def test_prediction_confidence_and_feature_tests():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 2, 500)
    assert prediction_test(reference, rng.integers(0, 2, 200), 2)[1] > 0.01
    assert prediction_test(reference, np.ones(200, dtype=int), 2)[1] < 1e-6
    assert prediction_test(np.zeros(10, dtype=int), np.zeros(10, dtype=int), 3) == (0.0, 1.0)
    conf = rng.uniform(0.7, 1.0, 500)
    drop, p = confidence_test(conf, rng.uniform(0.5, 0.8, 200))
    assert drop > 0.1 and p < 1e-6
    assert confidence_test(conf, rng.uniform(0.8, 1.0, 200))[1] > 0.5  # higher confidence is no drop
    assert feature_test(rng.normal(size=300), rng.normal(3, 1, size=200))[1] < 1e-6
    assert feature_test(np.zeros(5), np.zeros(5)) == (0.0, 1.0)


def test_check_window_verdicts_and_bonferroni_threshold():
    rng = np.random.default_rng(2)
    baseline = _baseline(rng)
    config = DriftConfig(window_size=100, permutations=200)
    same = {"embeddings": rng.normal(size=(100, 16)), "predictions": rng.integers(0, 2, 100),
            "confidences": rng.uniform(0.6, 1.0, 100), "length": rng.poisson(20, 100).astype(float)}
    result = check_window(baseline, same, config)
    assert result.threshold == pytest.approx(0.05 / 4)
    assert set(result.tests) == {"embedding_mmd", "prediction_chi2", "confidence_drop", "length_ks"}
    assert not result.drift
    longer = dict(same, length=rng.poisson(40, 100).astype(float))
    result = check_window(baseline, longer, config)
    assert result.drift and result.tests["length_ks"].drift and not result.tests["embedding_mmd"].drift
    moved = dict(same, embeddings=same["embeddings"] + 0.5)
    assert check_window(baseline, moved, config).tests["embedding_mmd"].drift
    assert result.to_dict()["tests"]["length_ks"]["drift"] is True


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"window_size": 5}, "window_size"), ({"alpha": 1.5}, "alpha"), ({"permutations": 50}, "permutations"),
    ({"max_reference": 1}, "max_reference"), ({"confidence_drop": -0.1}, "confidence_drop"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        DriftConfig(**kwargs)


def test_baseline_rejects_mismatched_arrays():
    rng = np.random.default_rng(3)
    with pytest.raises(MonitorError, match="confidences"):
        Baseline(["a", "b"], rng.normal(size=(20, 4)), np.zeros(20, dtype=int), np.ones(19), {})
