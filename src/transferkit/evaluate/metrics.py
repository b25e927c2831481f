"""Classification metrics computed with scikit-learn from labels and predicted probabilities.

Everything here is pure (numpy in, plain Python out) so that it can be checked exactly against
scikit-learn on fixed predictions and reused for any model family.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

# Scalar metrics a gate or a slice can use; "higher is better" for all of them except ece and loss.
SCALAR_METRICS = (
    "accuracy", "macro_f1", "micro_f1", "weighted_f1", "balanced_accuracy", "roc_auc", "pr_auc", "ece", "loss",
)
LOWER_IS_BETTER = frozenset({"ece", "loss"})
SLICE_METRICS = ("accuracy", "macro_f1", "weighted_f1")


@dataclass
class Calibration:
    """Reliability-diagram data: per confidence bin, the mean confidence, accuracy and count."""

    edges: list[float]
    confidence: list[float | None]
    accuracy: list[float | None]
    counts: list[int]
    ece: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "edges": self.edges, "confidence": self.confidence, "accuracy": self.accuracy,
            "counts": self.counts, "ece": self.ece,
        }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> Calibration:
    """Top-label expected calibration error with equal-width confidence bins.

    scikit-learn has ``calibration_curve`` only for one binary class and drops empty bins without
    returning counts, so the top-label ECE of Guo et al. (2017) is computed here: the mean over bins of
    ``|accuracy - confidence|`` weighted by the fraction of examples in the bin.

    Args:
        y_true: Integer labels, shape (n,).
        probs: Predicted probabilities, shape (n, k).
        n_bins: Number of equal-width bins over [0, 1].

    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 goes to bin 0.
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    total = len(y_true)
    ece = 0.0
    conf_out: list[float | None] = []
    acc_out: list[float | None] = []
    counts: list[int] = []
    for b in range(n_bins):
        mask = bins == b
        count = int(mask.sum())
        counts.append(count)
        if count == 0:
            conf_out.append(None)
            acc_out.append(None)
            continue
        mean_conf = float(confidence[mask].mean())
        mean_acc = float(correct[mask].mean())
        conf_out.append(mean_conf)
        acc_out.append(mean_acc)
        ece += abs(mean_acc - mean_conf) * count / total
    return Calibration([float(e) for e in edges], conf_out, acc_out, counts, float(ece))


@dataclass
class ClassificationMetrics:
    """All metrics of one model on one split."""

    labels: list[str]
    scalars: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    roc: dict[str, list[float]] | None
    pr: dict[str, list[float]] | None
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "labels": self.labels, "scalars": self.scalars, "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix, "roc": self.roc, "pr": self.pr,
            "calibration": self.calibration.to_dict(),
        }


def _finite(values: np.ndarray) -> list[float]:
    # roc_curve's first threshold is +inf (no positive prediction); JSON and the KFP UI need finite
    # numbers, and a threshold of 1.0 on a probability means the same thing.
    return [float(min(v, 1.0)) if math.isfinite(v) else 1.0 for v in values]


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    n_bins: int = 15,
    positive_index: int = 1,
) -> ClassificationMetrics:
    """Compute every evaluation metric from true label ids and predicted probabilities.

    Args:
        y_true: True label ids (indices into ``labels``).
        probs: Predicted probabilities, shape (n, len(labels)); rows sum to 1.
        labels: Label names of the model, index = id.
        n_bins: Bins of the reliability diagram / ECE.
        positive_index: Index of the positive class for ROC/PR curves of binary tasks.

    Returns:
        Scalars (accuracy, macro/micro/weighted F1, balanced accuracy, ROC-AUC and PR-AUC when defined,
        ECE, loss), per-class precision/recall/F1/support, the confusion matrix over all model labels,
        ROC and PR curve points (binary only) and calibration bins.

    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    k = len(labels)
    ids = list(range(k))
    y_pred = p.argmax(axis=1)
    scalars: dict[str, float] = {
        "accuracy": float(skm.accuracy_score(y, y_pred)),
        "macro_f1": float(skm.f1_score(y, y_pred, average="macro", zero_division=0)),
        "micro_f1": float(skm.f1_score(y, y_pred, average="micro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y, y_pred, average="weighted", zero_division=0)),
        "loss": float(skm.log_loss(y, p, labels=ids)),
    }
    with warnings.catch_warnings():
        # Predicting a class absent from y_true is normal on small splits; the score is still defined.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        scalars["balanced_accuracy"] = float(skm.balanced_accuracy_score(y, y_pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, y_pred, labels=ids, zero_division=0
    )
    per_class = [
        {
            "label": labels[i], "precision": float(precision[i]), "recall": float(recall[i]),
            "f1": float(f1[i]), "support": int(support[i]),
        }
        for i in ids
    ]
    matrix = skm.confusion_matrix(y, y_pred, labels=ids)
    roc = pr = None
    present = set(np.unique(y).tolist())
    if k == 2 and len(present) == 2:
        score = p[:, positive_index]
        positive = (y == positive_index).astype(int)
        scalars["roc_auc"] = float(skm.roc_auc_score(positive, score))
        scalars["pr_auc"] = float(skm.average_precision_score(positive, score))
        fpr, tpr, thresholds = skm.roc_curve(positive, score)
        roc = {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr], "thresholds": _finite(thresholds)}
        prec, rec, pr_thr = skm.precision_recall_curve(positive, score)
        pr = {"precision": [float(v) for v in prec], "recall": [float(v) for v in rec],
              "thresholds": _finite(pr_thr)}
    elif k > 2 and len(present) == k:
        scalars["roc_auc"] = float(skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=ids))
        scalars["pr_auc"] = float(skm.average_precision_score(np.eye(k)[y], p, average="macro"))
    calibration = expected_calibration_error(y, p, n_bins=n_bins)
    scalars["ece"] = calibration.ece
    return ClassificationMetrics(
        labels=list(labels), scalars=scalars, per_class=per_class,
        confusion_matrix=matrix.astype(int).tolist(), roc=roc, pr=pr, calibration=calibration,
    )


def slice_metric(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """One of :data:`SLICE_METRICS` on a subset (predictions only, so it is defined on any slice)."""
    if name == "accuracy":
        return float(skm.accuracy_score(y_true, y_pred))
    if name == "macro_f1":
        return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    if name == "weighted_f1":
        return float(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    raise ValueError(f"unknown slice metric {name!r}; expected one of {SLICE_METRICS}")


def slice_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    groups: Sequence[Any],
    *,
    gap_metric: str = "accuracy",
    min_size: int = 1,
) -> dict[str, Any]:
    """Metrics per value of a group column and the largest gap between slices.

    Args:
        y_true: True label ids.
        y_pred: Predicted label ids.
        groups: Group value per example (None values form the slice ``"(missing)"``).
        gap_metric: Metric whose max-min spread over slices is reported as the gap.
        min_size: Slices with fewer examples are reported but left out of the gap (too noisy).

    Returns:
        ``{"slices": [{group, n, accuracy, macro_f1, weighted_f1}...], "gap_metric", "gap", "best", "worst"}``;
        ``gap`` is None when fewer than two slices have ``min_size`` examples.

    """
    y = np.asarray(y_true, dtype=int)
    yp = np.asarray(y_pred, dtype=int)
    keys = np.asarray(["(missing)" if g is None else str(g) for g in groups], dtype=object)
    rows = []
    for group in sorted(set(keys.tolist())):
        mask = keys == group
        row: dict[str, Any] = {"group": group, "n": int(mask.sum())}
        for name in SLICE_METRICS:
            row[name] = slice_metric(name, y[mask], yp[mask])
        rows.append(row)
    eligible = [r for r in rows if r["n"] >= min_size]
    result: dict[str, Any] = {"slices": rows, "gap_metric": gap_metric, "gap": None, "best": None, "worst": None,
                              "min_size": min_size}
    if len(eligible) >= 2:
        best = max(eligible, key=lambda r: r[gap_metric])
        worst = min(eligible, key=lambda r: r[gap_metric])
        result.update(gap=float(best[gap_metric] - worst[gap_metric]), best=best["group"], worst=worst["group"])
    return result


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centered kernel alignment between two representations of the same examples.

    No dependency ships CKA, so it is written out from Kornblith et al. (2019), eq. for linear kernels:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``. It is 1 for
    identical representations (and invariant to rotation and isotropic scaling), near 0 for unrelated ones.

    Args:
        x: Representations, shape (n, d1).
        y: Representations of the same n examples, shape (n, d2).

    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"CKA needs the same n >= 2 examples in both inputs, got {a.shape[0]} and {b.shape[0]}")
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    cross = np.linalg.norm(b.T @ a, ord="fro") ** 2
    norm = np.linalg.norm(a.T @ a, ord="fro") * np.linalg.norm(b.T @ b, ord="fro")
    if norm == 0.0:
        return 0.0
    return float(min(cross / norm, 1.0))
