"""What :meth:`cdul_rt.Labeler.label` and :meth:`cdul_rt.Classifier.predict` return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class _PerImage:
    """Rows in input order; ``errors[i]`` is ``None`` where image ``i`` was read."""

    classes: list[str]
    labels: list[list[str]]
    errors: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ok(self) -> np.ndarray:
        """bool ``[n]``: which images were read (and scored)."""
        return np.array([e is None for e in self.errors], dtype=bool)

    def __repr__(self) -> str:
        """One line (a notebook cell showing a result of 100,000 images must not print every label list)."""
        n, bad = len(self), sum(e is not None for e in self.errors)
        first = f", labels[0]={self.labels[0]!r}" if n else ""
        return f"{type(self).__name__}({n} images, {len(self.classes)} classes, {bad} unreadable{first})"


@dataclass(frozen=True, repr=False)
class LabelResult(_PerImage):
    """Pseudo labels of ``n`` images, in input order.

    Attributes:
        classes: the ``C`` class names, the column order of every score array.
        scores: ``S_final`` float32 ``[n, C]``, what ``cdul-rt label`` writes as ``scores``.
        global_scores: ``S_global`` float32 ``[n, C]``, the whole image's class scores.
        aggregate_scores: ``S_ag`` float32 ``[n, C]``, the snippets' max-min aggregate.
        embeddings: float32 ``[n, D]``, each image's L2-normalised global-view embedding (same encoder call);
            ``None`` only for artifact folders exported before labeler graphs had them (re-export to get them).
        labels: the classes at or above the threshold (or the ``top_k`` best), highest score first.
        errors: ``None`` for each labeled image, else why it could not be read (``errors="collect"`` only); the
            rows of failed images are NaN in every array and their ``labels`` are empty.
    """

    classes: list[str]
    scores: np.ndarray
    global_scores: np.ndarray
    aggregate_scores: np.ndarray
    embeddings: np.ndarray | None
    labels: list[list[str]]
    errors: list[str | None]


@dataclass(frozen=True, repr=False)
class Prediction(_PerImage):
    """Classifier outputs for ``n`` images, in input order (see :class:`LabelResult` for ``errors``).

    Attributes:
        classes: the class names the classifier was trained on (column order).
        scores: per-class probabilities (sigmoid), float32 ``[n, C]``, what ``cdul-rt predict`` writes.
        labels: classes at or above the threshold (or the ``top_k`` most probable), highest first.
        errors: ``None`` per predicted image, else the reason it could not be read (NaN row, no labels).
    """

    classes: list[str]
    scores: np.ndarray
    labels: list[list[str]]
    errors: list[str | None]
