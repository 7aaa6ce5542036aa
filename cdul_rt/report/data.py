"""The report's data: per-image records (labels, top scores, false positives / misses), class statistics, meta."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.labelfile import LabelTable, select_labels, sidecar

TOP_SCORES = 3  # scores kept per image besides its labels (and, with ground truth, its misses)


@dataclass
class ReportData:
    """Everything the template shows, computed once in numpy."""

    table: LabelTable
    labels: list[list[int]]  # class indices per image, highest score first
    targets: np.ndarray | None = None  # [N, C] ground truth (1, 0, metrics.IGNORE), aligned to table order
    gt_notes: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    @property
    def has_gt(self) -> bool:
        return self.targets is not None


def label_indices(scores: np.ndarray, classes: list[str], meta: dict, threshold: float | None = None,
                  top_k: int | None = None) -> list[list[int]]:
    """Class indices per image, highest score first: the classes at ``threshold`` or the ``top_k`` best when
    either is given, else as the run selected them (its threshold / top-k from the meta; 0.5 when unknown).
    ``report`` and ``convert`` both show these label sets."""
    if threshold is None and top_k is None:
        config = meta.get("config", {})
        threshold, top_k = float(config.get("threshold", 0.5)), config.get("top_k")
    index = {c: j for j, c in enumerate(classes)}
    return [[index[c] for c in select_labels(row, classes, 0.5 if threshold is None else threshold, top_k)]
            for row in scores]


def image_root(labels: Path, images: Path | None, meta: dict) -> tuple[Path | None, str]:
    """The folder the label file's relative paths start from: ``--images``, else the meta's ``input`` (its folder
    when it was one file); ``(None, why)`` when that is not on this machine."""
    if images is not None:
        if not images.is_dir():
            raise CdulError(f"--images {images} is not a folder")
        return images.resolve(), ""
    recorded = meta.get("input")
    if recorded and Path(recorded).is_dir():
        return Path(recorded).resolve(), ""
    if recorded and Path(recorded).is_file():
        return Path(recorded).resolve().parent, ""
    why = f"the recorded input {recorded} is not on this machine" if recorded else f"{labels} has no meta input"
    return None, f"no thumbnails: {why}; pass --images DIR"


def read_failures(label_path: Path) -> list[dict]:
    """Rows ``{"path", "reason"}`` of ``<labels>.failures.jsonl`` (missing file: none); unparsable lines skipped."""
    path = sidecar(Path(label_path), "failures")
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash; `label` repairs it on resume
            rows.append({"path": str(row.get("path", "?")), "reason": str(row.get("reason", "unknown"))})
    return rows


def image_records(data: ReportData, thumbs: list[str | None]) -> list[list]:
    """One compact array per image for the page's script:
    ``[path, thumb, top score, [[class, score], ...], [label classes], [false positives], [misses]]``.

    The score list holds the labels, the ``TOP_SCORES`` best classes and the misses, highest first, so the page can
    filter any shown class by its score without carrying the full ``N x C`` matrix.
    """
    scores, records = data.table.scores, []
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_SCORES]
    for i, path in enumerate(data.table.paths):
        labels = data.labels[i]
        fps, misses = ([], []) if data.targets is None else _errors(labels, data.targets[i])
        keep = sorted(set(labels) | set(top[i].tolist()) | set(misses), key=lambda j: -scores[i, j])
        records.append([path, thumbs[i], round(float(scores[i, top[i, 0]]), 4) if scores.shape[1] else 0.0,
                        [[int(j), round(float(scores[i, j]), 4)] for j in keep], labels, fps, misses])
    return records


def _errors(labels: list[int], target_row: np.ndarray) -> tuple[list[int], list[int]]:
    positives = set(np.flatnonzero(target_row == 1).tolist())
    return [j for j in labels if target_row[j] == 0], sorted(positives - set(labels))


def class_counts(data: ReportData) -> np.ndarray:
    counts = np.zeros(len(data.table.classes), dtype=np.int64)
    for labels in data.labels:
        counts[labels] += 1
    return counts


def flat_meta(meta: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Every key of the run's meta as ``(dotted.key, value)`` rows; long lists are cut for display."""
    rows: list[tuple[str, str]] = []
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flat_meta(value, name + "."))
        elif isinstance(value, list) and len(value) > 12:
            rows.append((name, ", ".join(map(str, value[:12])) + f", ... ({len(value)} in all)"))
        elif isinstance(value, list):
            rows.append((name, ", ".join(map(str, value))))
        else:
            rows.append((name, json.dumps(value) if not isinstance(value, str) else value))
    return rows
