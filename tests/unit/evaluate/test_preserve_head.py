"""The logistic-regression head of preserve-source reproduces scikit-learn's probabilities."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from transferkit.errors import EvaluationError
from transferkit.evaluate.forgetting import gate
from transferkit.train.preserve import _fit_lr_head


@pytest.mark.parametrize("n_labels", [2, 3])
def test_lr_head_matches_sklearn(n_labels):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8))
    y = rng.integers(0, n_labels, size=120)
    xv, yv = rng.normal(size=(40, 8)), rng.integers(0, n_labels, size=40)
    (loss, acc), params, state = _fit_lr_head(x, y, xv, yv, n_labels, seed=0)
    reference = LogisticRegression(C=params["C"], max_iter=2000, random_state=0).fit(x, y)
    logits = torch.from_numpy(xv).float() @ state["weight"].T + state["bias"]
    probs = torch.softmax(logits.double(), -1).numpy()
    assert np.allclose(probs, reference.predict_proba(xv), atol=1e-5)
    assert acc == pytest.approx((reference.predict(xv) == yv).mean())
    assert loss == pytest.approx(log_loss(yv, reference.predict_proba(xv), labels=list(range(n_labels))), rel=1e-4)


def test_lr_head_never_predicts_labels_absent_from_training():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 4)), rng.integers(0, 2, size=60)
    _, _, state = _fit_lr_head(x, y, x, y, 3, seed=0)
    logits = torch.from_numpy(x).float() @ state["weight"].T + state["bias"]
    assert (logits.argmax(-1) != 2).all()


def test_retention_undefined_when_base_scores_zero():
    with pytest.raises(EvaluationError, match="retention is undefined"):
        gate(0.0, 0.1, max_drop=None, min_retention=0.5, metric="pearson", source="pairs.csv")
