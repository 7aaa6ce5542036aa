"""Average precision and mAP in plain numpy.

AP follows scikit-learn's ``average_precision_score`` exactly (step-wise, no interpolation):
``AP = sum_n (R_n - R_{n-1}) * P_n`` over the distinct score thresholds, ties grouped. scikit-learn is a test
dependency only; ``tests/test_metrics.py`` checks agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cdul_rt.errors import CdulError

IGNORE = -1  # target value for (image, class) pairs left out of the AP (e.g. VOC "difficult"-only objects)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class. ``targets`` in {0, 1} (entries equal to ``IGNORE`` are dropped first).

    Returns NaN when there is no positive (AP is undefined; callers exclude such classes).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel()
    if scores.shape != targets.shape:
        raise CdulError(f"scores and targets differ in length ({scores.size} vs {targets.size})")
    precision, recall = precision_recall_curve(scores, targets)
    if not precision.size:
        return float("nan")
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def precision_recall_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score threshold (highest first), the steps ``average_precision`` sums.

    Entries equal to ``IGNORE`` are dropped; with no positive, both arrays are empty.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel()
    keep = targets != IGNORE
    scores, positives = scores[keep], targets[keep] == 1
    if not positives.any():
        return np.empty(0), np.empty(0)
    order = np.argsort(-scores, kind="mergesort")
    scores, positives = scores[order], positives[order]
    threshold_idx = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(positives)[threshold_idx]
    return true_pos / (threshold_idx + 1), true_pos / true_pos[-1]


@dataclass(frozen=True)
class MapResult:
    """mAP over the classes that have at least one positive; the others are listed in ``excluded``."""

    map: float
    per_class: dict[str, float]
    excluded: list[str] = field(default_factory=list)
    num_images: int = 0

    def to_dict(self) -> dict:
        return {
            "mAP": self.map,
            "num_images": self.num_images,
            "num_classes": len(self.per_class),
            "per_class_AP": self.per_class,
            "excluded_classes_without_positives": self.excluded,
        }


def check_predictions(paths: list[str], scores: np.ndarray, source: str = "predictions"
                      ) -> tuple[np.ndarray, list[str]]:
    """Refuse what would make mAP silently wrong; return usable scores and warnings.

    No rows: an error (not "no positive"). A path on several rows: an error (which row counts is ambiguous, and
    duplicates weigh an image twice). Non-finite scores (NaN, inf): a warning; they rank below every finite score
    (NaN, -inf) or above it (+inf), so the AP stays defined and says what such a row is worth.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(paths) == 0:
        raise CdulError(f"{source} holds no rows; nothing to evaluate (was the label run interrupted?)")
    if len(set(paths)) != len(paths):
        seen: set[str] = set()
        dup = sorted({p for p in paths if p in seen or seen.add(p)})
        raise CdulError(f"{source} has {len(dup)} images on more than one row (e.g. {', '.join(dup[:3])}); a label "
                        "file holds one row per image: re-create it (cdul-rt label --overwrite) or drop the repeats")
    warnings = []
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        warnings.append(f"{int(bad.sum())} scores in {len(rows)} rows of {source} are NaN or infinite (e.g. "
                        f"{', '.join(paths[i] for i in rows[:3])}); NaN and -inf rank lowest, +inf highest")
        finite = scores[~bad]
        lo, hi = (finite.min() - 1, finite.max() + 1) if finite.size else (-1.0, 1.0)
        scores = np.where(np.isnan(scores) | (scores == -np.inf), lo, np.where(scores == np.inf, hi, scores))
    return scores, warnings


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, classes: list[str]) -> MapResult:
    """mAP of ``scores [N, C]`` against ``targets [N, C]`` (0/1, or ``IGNORE``)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[1] != len(classes):
        raise CdulError(
            f"score matrix {scores.shape}, target matrix {targets.shape} and {len(classes)} classes do not agree"
        )
    per_class: dict[str, float] = {}
    excluded: list[str] = []
    for j, name in enumerate(classes):
        ap = average_precision(scores[:, j], targets[:, j])
        if np.isnan(ap):
            excluded.append(name)
        else:
            per_class[name] = ap
    if not per_class:
        raise CdulError("no class has a positive example in the ground truth; mAP is undefined")
    return MapResult(float(np.mean(list(per_class.values()))), per_class, excluded, int(scores.shape[0]))
