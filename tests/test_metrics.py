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


# -- mutation survivors (issue 19 item 4) ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_ap_of_hard_or_integer_scores_agrees_with_sklearn(dtype):
    rng = np.random.default_rng(5)
    targets = (rng.random(60) < 0.4).astype(int)
    scores = (rng.random(60) < 0.5) if dtype is bool else rng.integers(0, 256, 60).astype(np.uint8)
    scores[0] = targets[0] = 1  # a positive, and a score of 0 that must rank last (uint8 negation would wrap it)
    assert average_precision(scores, targets) == pytest.approx(
        sklearn_metrics.average_precision_score(targets, scores.astype(float)))
    precision, recall = precision_recall_curve(scores, targets)
    sk_precision, sk_recall, _ = sklearn_metrics.precision_recall_curve(targets, scores.astype(float))
    np.testing.assert_allclose(precision, sk_precision[:-1][::-1])
    np.testing.assert_allclose(recall, sk_recall[:-1][::-1])


def test_pr_curve_without_a_positive_is_two_empty_arrays():
    precision, recall = precision_recall_curve([0.3, 0.2, 0.9], [0, 0, IGNORE])
    assert precision.shape == recall.shape == (0,)


def test_check_predictions_names_the_repeated_and_the_empty():
    from cdul_rt.metrics import check_predictions

    with pytest.raises(CdulError) as e:
        check_predictions([], np.zeros((0, 2)))
    assert str(e.value) == "predictions holds no rows; nothing to evaluate (was the label run interrupted?)"
    paths = ["a", "b", "c", "d", "e", "a", "b", "c", "d", "a"]
    with pytest.raises(CdulError) as e:
        check_predictions(paths, np.zeros((10, 2)), source="p.jsonl")
    assert str(e.value) == ("p.jsonl has 4 images on more than one row (e.g. a, b, c); a label file holds one row per "
                            "image: re-create it (cdul-rt label --overwrite) or drop the repeats")


def test_check_predictions_ranks_nan_and_minus_inf_lowest_and_plus_inf_highest():
    from cdul_rt.metrics import check_predictions

    paths = ["a", "b", "c", "d"]
    clean = np.array([[0.2, 0.5], [0.7, 0.1], [0.3, 0.4], [0.9, 0.6]])
    assert check_predictions(paths, clean) == (pytest.approx(clean), [])
    scores = clean.copy()
    scores[1, 0], scores[2, 1], scores[3, 1] = np.nan, np.inf, -np.inf
    got, warnings = check_predictions(paths, scores, source="p.csv")
    assert warnings == ["3 scores in 3 rows of p.csv are NaN or infinite (e.g. b, c, d); NaN and -inf rank lowest, "
                        "+inf highest"]
    assert np.isfinite(got).all()
    finite = ~np.isin(np.arange(8).reshape(4, 2), [2, 5, 7])
    np.testing.assert_array_equal(got[finite], clean[finite])  # finite scores kept as they are
    assert got[1, 0] < clean[finite].min() and got[3, 1] < clean[finite].min()
    assert got[2, 1] > clean[finite].max()
    # rows named: one row with two bad scores, five rows, only the first three listed
    scores = np.zeros((5, 2))
    scores[4] = np.nan
    scores[:4, 1] = np.inf
    assert check_predictions(list("vwxyz"), scores)[1][0].startswith("6 scores in 5 rows of predictions are NaN or "
                                                                    "infinite (e.g. v, w, x);")
    # nothing finite at all: NaN still below +inf
    got, _ = check_predictions(["a", "b"], np.array([[np.nan, np.inf], [-np.inf, np.inf]]))
    assert got[0, 0] < got[0, 1] and got[1, 0] < got[1, 1] and got[0, 0] == got[1, 0]


def test_check_predictions_stand_ins_bracket_scores_outside_zero_one():
    from cdul_rt.metrics import check_predictions

    got, _ = check_predictions(["a", "b", "c", "d"], np.array([[5.0], [-3.0], [np.nan], [np.inf]]))  # e.g. logits
    assert got[2, 0] < -3.0 and got[3, 0] > 5.0
