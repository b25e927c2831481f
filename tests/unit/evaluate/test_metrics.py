import numpy as np
import pytest
from sklearn import metrics as skm

from transferkit.evaluate.metrics import classification_metrics, expected_calibration_error, linear_cka, slice_metrics


def _probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k)) * 2
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200)
    p = _probs(rng, 200, 2)
    # Make the classifier better than chance so that every metric is non-trivial.
    p[np.arange(100), y[:100]] += 1.0
    p /= p.sum(axis=1, keepdims=True)
    return y, p


def test_binary_metrics_equal_sklearn_exactly(binary):
    y, p = binary
    m = classification_metrics(y, p, ["negative", "positive"])
    pred = p.argmax(axis=1)
    s = m.scalars
    assert s["accuracy"] == skm.accuracy_score(y, pred)
    assert s["macro_f1"] == skm.f1_score(y, pred, average="macro")
    assert s["micro_f1"] == skm.f1_score(y, pred, average="micro")
    assert s["weighted_f1"] == skm.f1_score(y, pred, average="weighted")
    assert s["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
    assert s["roc_auc"] == skm.roc_auc_score(y, p[:, 1])
    assert s["pr_auc"] == skm.average_precision_score(y, p[:, 1])
    assert s["loss"] == skm.log_loss(y, p)
    assert m.confusion_matrix == skm.confusion_matrix(y, pred).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred)
    for i, row in enumerate(m.per_class):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (
            precision[i], recall[i], f1[i], support[i])
    fpr, tpr, thr = skm.roc_curve(y, p[:, 1])
    assert m.roc["fpr"] == fpr.tolist() and m.roc["tpr"] == tpr.tolist()
    # The +inf first threshold is made finite for JSON / KFP; the others are unchanged.
    assert m.roc["thresholds"][0] == 1.0 and m.roc["thresholds"][1:] == thr[1:].tolist()


def test_multiclass_metrics_cover_all_model_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=150)
    p = _probs(rng, 150, 4)  # the model knows a 4th label that never occurs in the data
    m = classification_metrics(y, p, ["a", "b", "c", "d"])
    pred = p.argmax(axis=1)
    assert m.scalars["macro_f1"] == skm.f1_score(y, pred, average="macro", zero_division=0)
    assert m.scalars["loss"] == skm.log_loss(y, p, labels=[0, 1, 2, 3])
    assert m.confusion_matrix == skm.confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()
    assert len(m.per_class) == 4 and m.per_class[3]["support"] == 0
    assert m.roc is None and "roc_auc" not in m.scalars  # not every class present: AUC undefined


def test_multiclass_auc_when_all_classes_present():
    rng = np.random.default_rng(2)
    y = np.tile([0, 1, 2], 40)
    p = _probs(rng, 120, 3)
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m.scalars["roc_auc"] == skm.roc_auc_score(y, p, multi_class="ovr", average="macro")


def test_ece_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    cal = expected_calibration_error(y, p, n_bins=2)
    # bin (0.5, 1.0] holds all four: confidences .9 .6 .7 .8 (mean .75), correct 1 1 0 1 (mean .75)
    assert cal.counts == [0, 4]
    assert cal.ece == pytest.approx(0.0)
    cal10 = expected_calibration_error(y, p, n_bins=10)
    # bins: .6 -> (.5,.6] correct; .7 -> (.6,.7] wrong; .8 correct; .9 correct
    expected = (abs(1 - 0.6) + abs(0 - 0.7) + abs(1 - 0.8) + abs(1 - 0.9)) / 4
    assert cal10.ece == pytest.approx(expected)
    assert sum(cal10.counts) == 4


def test_slice_metrics_equal_sklearn_per_slice():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=90)
    pred = np.where(rng.random(90) < 0.7, y, 1 - y)
    groups = np.array(["a"] * 40 + ["b"] * 45 + ["c"] * 5, dtype=object)
    groups[3] = None
    result = slice_metrics(y, pred, list(groups), gap_metric="accuracy", min_size=10)
    by_group = {row["group"]: row for row in result["slices"]}
    assert set(by_group) == {"a", "b", "c", "(missing)"}
    for name in by_group:
        keys = np.array(["(missing)" if g is None else g for g in groups])
        mask = keys == name
        assert by_group[name]["n"] == mask.sum()
        assert by_group[name]["accuracy"] == skm.accuracy_score(y[mask], pred[mask])
        assert by_group[name]["macro_f1"] == skm.f1_score(y[mask], pred[mask], average="macro", zero_division=0)
    eligible = [r for r in result["slices"] if r["n"] >= 10]
    assert {r["group"] for r in eligible} == {"a", "b"}
    values = [r["accuracy"] for r in eligible]
    assert result["gap"] == max(values) - min(values)
    assert by_group[result["worst"]]["accuracy"] == min(values)


def test_slice_gap_is_none_with_one_eligible_slice():
    result = slice_metrics([0, 1, 1], [0, 1, 0], ["x", "x", "y"], min_size=2)
    assert result["gap"] is None


def test_linear_cka_properties():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 16))
    assert linear_cka(x, x) == pytest.approx(1.0)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)  # rotation/scale/shift invariant
    assert linear_cka(x, rng.normal(size=(64, 16))) < 0.5
    with pytest.raises(ValueError, match="same n"):
        linear_cka(x, x[:10])


def test_pooling_marker_matches_the_training_package():
    modeling = pytest.importorskip("transferkit.train.modeling")
    from transferkit.evaluate.inference import MEAN_POOLING_MARKER

    assert modeling.MEAN_POOLING_MARKER == MEAN_POOLING_MARKER
