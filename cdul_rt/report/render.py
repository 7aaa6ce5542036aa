"""Assemble and write the report page: data + thumbnails + plots through the Jinja2 template."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from cdul_rt import __version__
from cdul_rt.errors import CdulError, require
from cdul_rt.fileio import atomic_write
from cdul_rt.report.data import (ReportData, class_counts, flat_meta, image_records, image_root, label_indices,
                                 read_failures)
from cdul_rt.report.thumbs import EMBED_LIMIT, make_thumbnails

WORST_CLASSES = 5  # precision-recall curves drawn for this many lowest-AP classes
PAGE_SIZE = 48
FAILURES_SHOWN = 1000


@dataclass
class ReportSummary:
    out: Path
    images: int
    thumbnails: int
    thumbs_mode: str
    mean_ap: float | None = None
    notes: tuple[str, ...] = ()


def load_report_data(labels: Path, gt: Path | None) -> ReportData:
    from cdul_rt.labelfile import read_label_file

    table = read_label_file(labels)
    if not table.classes:
        raise CdulError(f"{labels} has no classes (an empty label file?); label some images first")
    data = ReportData(table, label_indices(table.scores, table.classes, table.meta), failures=read_failures(labels))
    if gt is not None:
        from cdul_rt.groundtruth import load_ground_truth

        truth = load_ground_truth(gt, table.paths, table.classes)
        data.targets, data.gt_notes = truth.targets, list(truth.notes)
    return data


def _gt_section(data: ReportData) -> dict:
    from cdul_rt.metrics import mean_average_precision, precision_recall_curve
    from cdul_rt.report.plots import ap_plot, pr_curves_plot

    classes = data.table.classes
    result = mean_average_precision(data.table.scores, data.targets, classes)
    worst = sorted(result.per_class, key=result.per_class.get)[:WORST_CLASSES]
    curves = {}
    for name in worst:
        j = classes.index(name)
        precision, recall = precision_recall_curve(data.table.scores[:, j], data.targets[:, j])
        curves[name] = (precision, recall, result.per_class[name])
    positives = (data.targets == 1).sum(0)
    rows = [{"name": c, "ap": result.per_class.get(c), "positives": int(positives[j])} for j, c in enumerate(classes)]
    rows.sort(key=lambda r: (r["ap"] is None, r["ap"] if r["ap"] is not None else 0.0))
    return {"map": result.map, "rows": rows, "excluded": result.excluded, "notes": data.gt_notes,
            "ap_plot": ap_plot(result.per_class), "pr_plot": pr_curves_plot(curves)}


def render_report(labels: Path, out: Path, images: Path | None = None, gt: Path | None = None,
                  thumbs: str = "auto", workers: int = 4, progress: bool = True) -> ReportSummary:
    """Write the report page (and, with ``thumbs="folder"``, ``<out stem>_files/``) and return what it holds."""
    jinja2 = require("jinja2", "report")
    from cdul_rt.report.plots import class_counts_plot, score_histograms_plot

    data = load_report_data(labels, gt)
    table, notes = data.table, []
    root, why = image_root(labels, images, table.meta)
    if thumbs == "auto":
        thumbs = "embed" if len(table.paths) <= EMBED_LIMIT else "folder"
    if root is None:
        thumbs = "none"
        notes.append(why)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = make_thumbnails(table.paths, root or Path("."), thumbs, out.parent / f"{out.stem}_files", out.parent,
                              workers, progress)
    counts = class_counts(data)
    threshold = float(table.meta.get("config", {}).get("threshold", 0.5))
    gt_section = _gt_section(data) if data.has_gt else None
    blob = {"classes": table.classes, "images": image_records(data, sources), "hasGt": data.has_gt,
            "pageSize": PAGE_SIZE}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("template.html.j2").render(
        title=f"cdul-rt report: {labels.name}", labels=str(labels), n_images=len(table.paths),
        n_classes=len(table.classes), version=__version__, made=time.strftime("%Y-%m-%d %H:%M:%S"),
        meta=flat_meta(table.meta), failures=data.failures[:FAILURES_SHOWN], n_failures=len(data.failures),
        counts_plot=class_counts_plot(table.classes, counts, len(table.paths)),
        hist_plot=score_histograms_plot(table.classes, table.scores, counts, threshold),
        gt=gt_section, gt_source=str(gt) if gt else "", notes=notes,
        # "<" escaped so no string in the data (a file name) can close the script element
        data_json=json.dumps(blob, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c"))
    # a non-UTF-8 file name (lone surrogates, as `label` keeps it) is written as \udcXX: a JSON escape in the blob
    atomic_write(out, html, errors="backslashreplace")
    return ReportSummary(out, len(table.paths), sum(s is not None for s in sources), thumbs,
                         gt_section["map"] if gt_section else None, tuple(notes + (data.gt_notes or [])))
