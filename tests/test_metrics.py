"""AP / mAP in numpy against scikit-learn's average_precision_score (a test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.metrics import IGNORE, average_precision, mean_average_precision, precision_recall_curve

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(8))
def test_ap_agrees_with_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    targets = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    targets[0] = 1
    # quantised scores so ties occur (sklearn groups tied scores into one threshold)
    scores = np.round(rng.random(n), int(rng.integers(1, 4)))
    assert average_precision(scores, targets) == pytest.approx(sklearn_metrics.average_precision_score(targets, scores))


def test_ap_hand_example_and_ties():
    # ranking: + - + -> P = 1, 2/3 at recalls 0.5, 1 -> AP = 0.5 + 0.5 * 2/3
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    # all tied: one threshold, precision = base rate
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 1]) == pytest.approx(0.5)
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(4))
def test_pr_curve_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random(120) < 0.3).astype(int)
    targets[0] = 1
    scores = np.round(rng.random(120), 2)  # ties
    precision, recall = precision_recall_curve(scores, targets)
    sk_precision, sk_recall, _ = sklearn_metrics.precision_recall_curve(targets, scores)
    # sklearn: thresholds ascending plus a final (precision 1, recall 0) point; ours: thresholds descending
    np.testing.assert_allclose(precision, sk_precision[:-1][::-1])
    np.testing.assert_allclose(recall, sk_recall[:-1][::-1])
    assert precision_recall_curve([0.3, 0.2], [0, IGNORE])[0].size == 0


def test_ignored_entries_are_dropped():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    with_ignore = average_precision(scores, np.array([IGNORE, 0, 1, 1]))
    assert with_ignore == pytest.approx(sklearn_metrics.average_precision_score([0, 1, 1], [0.8, 0.7, 0.1]))


def test_map_excludes_classes_without_positives():
    rng = np.random.default_rng(3)
    scores = rng.random((40, 4))
    targets = (rng.random((40, 4)) < 0.3).astype(np.int8)
    targets[:, 2] = 0
    result = mean_average_precision(scores, targets, ["a", "b", "c", "d"])
    assert result.excluded == ["c"] and result.num_images == 40
    doc = result.to_dict()
    assert (doc["mAP"], doc["num_images"], doc["num_classes"]) == (result.map, 40, 3)
    assert doc["per_class_AP"] == result.per_class and doc["excluded_classes_without_positives"] == ["c"]
    assert set(result.per_class) == {"a", "b", "d"}
    expected = np.mean([sklearn_metrics.average_precision_score(targets[:, j], scores[:, j]) for j in (0, 1, 3)])
    assert result.map == pytest.approx(expected)
    # sklearn's macro average over the same classes agrees too
    keep = [0, 1, 3]
    assert result.map == pytest.approx(
        sklearn_metrics.average_precision_score(targets[:, keep], scores[:, keep], average="macro"))


def test_map_shape_errors_are_clear():
    with pytest.raises(CdulError, match="do not agree"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(CdulError, match=r"^no class has a positive example .*; mAP is undefined$"):
        mean_average_precision(np.zeros((3, 1)), np.zeros((3, 1)), ["a"])
    with pytest.raises(CdulError, match=r"differ in length \(3 vs 2\)"):
        average_precision(np.zeros(3), np.zeros(2))
