"""Ground-truth readers for ``eval`` and ``train --gt``: VOC XML folders, COCO instances JSON, CSV / JSONL label sets.

Every reader yields ``{image key: (positive classes, ignored classes)}``; ``align_ground_truth`` matches the keys to
prediction paths (exact relative path, else unique file name, else unique file stem) and builds a target matrix in
the prediction's class order, with ``metrics.IGNORE`` for VOC "difficult"-only objects (the VOC classification
protocol leaves those out of the AP).
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.metrics import IGNORE

Entries = dict[str, tuple[set[str], set[str]]]


@dataclass(frozen=True)
class GroundTruth:
    """Targets ``[N, C]`` in the order of the given paths and classes (1 positive, 0 negative, -1 ignored)."""

    targets: np.ndarray
    source_kind: str
    unused_images: int = 0
    notes: list[str] = field(default_factory=list)


def read_voc(folder: Path) -> Entries:
    """A VOC-style folder: ``Annotations/*.xml`` (or ``*.xml`` directly inside). Key: ``<filename>``."""
    xml_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise CdulError(f"no VOC XML annotations in {xml_dir}; --gt takes a VOC folder, a COCO .json, .csv or .jsonl")
    entries: Entries = {}
    for xml_file in files:
        try:
            root = ET.parse(xml_file).getroot()
        except ET.ParseError as exc:
            raise CdulError(f"cannot parse {xml_file}: {exc}") from exc
        name = (root.findtext("filename") or "").strip() or xml_file.stem
        positives, difficult = set(), set()
        for obj in root.iter("object"):
            cls = (obj.findtext("name") or "").strip()
            if not cls:
                continue
            (difficult if (obj.findtext("difficult") or "0").strip() == "1" else positives).add(cls)
        entries[name] = (positives, difficult - positives)
    return entries


def read_coco(path: Path) -> tuple[Entries, list[str]]:
    """COCO instances JSON. Key: ``file_name``. Crowd annotations count as present. Returns entries and all classes."""
    try:
        data = json.loads(path.read_text())
        categories = {c["id"]: c["name"] for c in data["categories"]}
        images = {im["id"]: im["file_name"] for im in data["images"]}
        annotations = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CdulError(f"{path} is not a COCO instances file (images, annotations, categories): {exc}") from exc
    entries: Entries = {name: (set(), set()) for name in images.values()}
    for ann in annotations:
        try:
            entries[images[ann["image_id"]]][0].add(categories[ann["category_id"]])
        except KeyError as exc:
            raise CdulError(f"{path}: annotation {ann.get('id')} refers to unknown image or category {exc}") from exc
    return entries, list(categories.values())


def _label_set(labels) -> set[str]:
    """A list of class names, or one string of names separated by ``;`` or ``|`` (as in a CSV), never letters."""
    if isinstance(labels, str):
        return {t.strip() for t in labels.replace("|", ";").split(";") if t.strip()}
    if not isinstance(labels, list | tuple):
        raise TypeError(f"labels must be a list of class names or a string, got {type(labels).__name__}")
    return set(map(str, labels))


def read_jsonl(path: Path) -> Entries:
    """Rows ``{"path": ..., "labels": [...]}`` (the ``label`` command's output works as ground truth too)."""
    entries: Entries = {}
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                entries[str(row["path"])] = (_label_set(row["labels"]), set())
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CdulError(f"{path}:{number}: expected {{\"path\": ..., \"labels\": [...]}} ({exc})") from exc
    return entries


def read_csv(path: Path) -> Entries:
    """Either columns ``path,labels`` (labels separated by ``;`` or ``|``) or ``path`` plus one 0/1 column per class."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "path" not in rows[0]:
        raise CdulError(f"{path}: a ground-truth CSV needs a header with a 'path' column")
    entries: Entries = {}
    if "labels" in rows[0]:
        for row in rows:
            text = (row["labels"] or "").replace("|", ";")
            entries[row["path"]] = ({t.strip() for t in text.split(";") if t.strip()}, set())
        return entries
    class_columns = [c for c in rows[0] if c != "path"]
    for number, row in enumerate(rows, 2):
        try:
            entries[row["path"]] = ({c for c in class_columns if float(row[c] or 0) > 0}, set())
        except ValueError as exc:
            raise CdulError(f"{path}:{number}: class columns must be 0/1 ({exc})") from exc
    return entries


def read_ground_truth(source: Path) -> tuple[Entries, str, list[str] | None]:
    """Dispatch on the source: folder -> VOC, .json -> COCO, .jsonl, .csv. Returns entries, kind, known classes."""
    source = Path(source)
    if source.is_dir():
        return read_voc(source), "voc", None
    if not source.is_file():
        raise CdulError(f"ground truth {source} does not exist")
    suffix = source.suffix.lower()
    if suffix == ".json":
        entries, classes = read_coco(source)
        return entries, "coco", classes
    if suffix == ".jsonl":
        return read_jsonl(source), "jsonl", None
    if suffix == ".csv":
        return read_csv(source), "csv", None
    raise CdulError(f"unknown ground-truth format {source.name}: use a VOC folder, a COCO .json, a .csv or a .jsonl")


def _index(keys: Sequence[str]) -> tuple[dict[str, str], dict[str, list[str]], dict[str, list[str]]]:
    by_path, by_name, by_stem = {}, defaultdict(list), defaultdict(list)
    for key in keys:
        norm = PurePosixPath(key.replace("\\", "/"))
        by_path[str(norm)] = key
        by_name[norm.name].append(key)
        by_stem[norm.stem].append(key)
    return by_path, by_name, by_stem


def match_paths(pred_paths: Sequence[str], gt_keys: Sequence[str]) -> list[str]:
    """The ground-truth key of each prediction path; CdulError listing the unmatched or ambiguous ones."""
    by_path, by_name, by_stem = _index(gt_keys)
    matched, missing, ambiguous = [], [], []
    for raw in pred_paths:
        norm = PurePosixPath(raw.replace("\\", "/"))
        if str(norm) in by_path:
            matched.append(by_path[str(norm)])
            continue
        for table, key in ((by_name, norm.name), (by_stem, norm.stem)):
            hits = table.get(key, [])
            if len(hits) == 1:
                matched.append(hits[0])
                break
            if len(hits) > 1:
                ambiguous.append(raw)
                break
        else:
            missing.append(raw)
    if missing or ambiguous:
        parts = []
        if missing:
            parts.append(f"{len(missing)} prediction paths have no ground truth (e.g. {', '.join(missing[:3])})")
        if ambiguous:
            parts.append(f"{len(ambiguous)} match several ground-truth images (e.g. {', '.join(ambiguous[:3])})")
        raise CdulError("; ".join(parts) + "; check that --pred and --gt describe the same images")
    return matched


def align_ground_truth(
    entries: Entries, pred_paths: Sequence[str], classes: Sequence[str], kind: str = "", gt_classes=None
) -> GroundTruth:
    """Target matrix for ``pred_paths`` x ``classes``; unknown ground-truth class names are an error."""
    keys = match_paths(pred_paths, list(entries))
    used = [entries[k] for k in keys]
    seen = set().union(*(p | i for p, i in used)) if used else set()
    unknown = sorted(seen - set(classes))
    if unknown:
        raise CdulError(
            f"ground truth uses {len(unknown)} classes the predictions do not have: {', '.join(unknown[:10])}; "
            "predict with the same vocabulary as the ground truth (e.g. --classes voc / coco)"
        )
    index = {c: j for j, c in enumerate(classes)}
    targets = np.zeros((len(pred_paths), len(classes)), dtype=np.int8)
    for row, (positives, ignored) in enumerate(used):
        for cls in ignored:
            targets[row, index[cls]] = IGNORE
        for cls in positives:
            targets[row, index[cls]] = 1
    notes = []
    if gt_classes is not None:
        extra = sorted(set(classes) - set(gt_classes))
        if extra:
            notes.append(f"classes not in the ground-truth vocabulary: {', '.join(extra)}")
    unused = len(entries) - len(set(keys))
    if unused:
        notes.append(f"{unused} ground-truth images have no prediction and are not evaluated")
    return GroundTruth(targets, kind, unused, notes)


def load_ground_truth(source: Path, pred_paths: Sequence[str], classes: Sequence[str]) -> GroundTruth:
    """Read ``source`` and align it to the prediction paths and classes."""
    entries, kind, gt_classes = read_ground_truth(Path(source))
    return align_ground_truth(entries, pred_paths, classes, kind, gt_classes)
