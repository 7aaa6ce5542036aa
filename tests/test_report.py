"""`cdul-rt report`: the page's data blob, plots, meta, failures and ground-truth section, and that it stays
self-contained (the browser test is tests/test_report_browser.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.labelfile import select_labels, sidecar, write_label_file
from cdul_rt.metrics import mean_average_precision
from conftest import make_images

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

CLASSES = ["cat", "dog", "person", "car"]


def page_data(html: str) -> dict:
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(blob)


@pytest.fixture()
def labeled(tmp_path):
    """8 real images, a label file with scores, a meta recording the input folder, and two failures."""
    images = tmp_path / "images"
    paths = [p.relative_to(images).as_posix() for p in make_images(images, 8)]
    rng = np.random.default_rng(0)
    truth = (rng.random((8, 4)) < 0.4).astype(int)
    truth[0] = [1, 1, 0, 0]
    scores = np.clip(truth * 0.45 + rng.random((8, 4)) * 0.55, 0, 1).astype(np.float32)
    meta = {"input": str(images), "config": {"model": "cdul-tiny", "grid": 3, "zeta": 0.3, "lambda": 1.0,
                                             "threshold": 0.5, "runtime": "torch", "precision": "fp32"}}
    labels = write_label_file(tmp_path / "labels.jsonl", paths, CLASSES, scores, meta=meta)
    sidecar(labels, "failures").write_text(
        '{"path": "broken.jpg", "reason": "cannot identify image file"}\n{"path": "cut.jpg", "reason": "truncated')
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"path": p, "labels": [c for c, t in zip(CLASSES, row) if t]}) + "\n"
                          for p, row in zip(paths, truth)))
    return labels, gt, paths, scores, truth


def run(*args) -> str:
    result = CliRunner().invoke(main, ["report", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def test_report_page_holds_every_image_its_labels_meta_and_failures(labeled, tmp_path):
    labels, _, paths, scores, _ = labeled
    out = tmp_path / "r" / "report.html"
    run(labels, "--out", out)
    html = out.read_text(encoding="utf-8")
    data = page_data(html)
    assert data["classes"] == CLASSES and not data["hasGt"]
    records = {r[0]: r for r in data["images"]}
    assert sorted(records) == sorted(paths)
    for path, row in zip(paths, scores):
        rec = records[path]
        assert [CLASSES[j] for j in rec[4]] == select_labels(row, CLASSES, 0.5, None)
        assert rec[2] == pytest.approx(row.max(), abs=1e-4)
        kept = dict(rec[3])
        assert all(kept[j] == pytest.approx(row[j], abs=1e-4) for j in rec[4])  # every label's score is there
        assert rec[1].startswith("data:image/jpeg;base64,")  # 8 images: embedded
    # meta keys (whatever the meta has) and the failures with their reasons
    for key in ("config.model", "config.zeta", "config.lambda", "config.grid", "config.precision", "input"):
        assert f"<th>{key}</th>" in html
    assert "cannot identify image file" in html and "Failures (1)" in html  # the line cut by a crash is skipped
    assert html.count('src="data:image/png;base64,') == 2  # counts + histograms, no ground-truth plots
    # self-contained: nothing is loaded from a server
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<link" not in html


def test_report_with_ground_truth_has_ap_and_errors_per_image(labeled, tmp_path):
    labels, gt, paths, scores, truth = labeled
    out = tmp_path / "report.html"
    output = run(labels, "--gt", gt, "--out", out, "--thumbs", "none")
    html = out.read_text(encoding="utf-8")
    data = page_data(html)
    expected = mean_average_precision(scores, truth, CLASSES)
    assert f"mAP {100 * expected.map:.2f}" in output and f"mAP {100 * expected.map:.2f}" in html
    for name, ap in expected.per_class.items():
        assert f"<tr><td>{name}</td><td>{100 * ap:.2f}</td>" in html
    assert html.count('src="data:image/png;base64,') == 4  # + AP bars and PR curves
    for rec in data["images"]:
        i = paths.index(rec[0])
        predicted = set(select_labels(scores[i], CLASSES, 0.5, None))
        actual = {c for c, t in zip(CLASSES, truth[i]) if t}
        assert {CLASSES[j] for j in rec[5]} == predicted - actual  # false positives
        assert {CLASSES[j] for j in rec[6]} == actual - predicted  # misses
        assert {j for j, _ in rec[3]} >= set(rec[6])  # a missed class's score is kept for the score filter
        assert rec[1] is None


def test_report_thumbnail_folder_beside_the_page(labeled, tmp_path):
    labels, _, paths, _, _ = labeled
    out = tmp_path / "site" / "labels report.html"
    run(labels, "--out", out, "--thumbs", "folder")
    from urllib.parse import unquote

    from PIL import Image

    data = page_data(out.read_text(encoding="utf-8"))
    for rec in data["images"]:
        thumb = out.parent / unquote(rec[1])
        assert thumb.parent == out.parent / "labels report_files"
        with Image.open(thumb) as im:
            assert max(im.size) <= 160


def test_report_without_images_says_why_and_still_writes(labeled, tmp_path):
    labels, _, _, _, _ = labeled
    meta = json.loads(sidecar(labels, "meta").read_text())
    meta["input"] = str(tmp_path / "moved-away")
    sidecar(labels, "meta").write_text(json.dumps(meta))
    result = CliRunner().invoke(main, ["report", str(labels), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "pass --images DIR" in result.output
    out = Path(str(labels) + ".report.html")
    assert all(rec[1] is None for rec in page_data(out.read_text(encoding="utf-8"))["images"])


def test_report_errors_are_clean(labeled, tmp_path):
    labels, _, _, _, _ = labeled
    bad_gt = tmp_path / "bad.jsonl"
    bad_gt.write_text('{"path": "img_0001.png", "labels": ["unicorn"]}\n')
    result = CliRunner().invoke(main, ["report", str(labels), "--gt", str(bad_gt), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "Error:" in result.output


def test_an_unwritable_out_is_a_clear_error(labeled, tmp_path):
    labels, _, _, _, _ = labeled
    (tmp_path / "a_file").write_text("x")
    result = CliRunner().invoke(main, ["report", str(labels), "--out", str(tmp_path / "a_file" / "r.html"), "-q"])
    assert result.exit_code == 2 and "cannot write" in result.output, result.output


def test_a_label_on_an_ignored_object_is_neither_a_false_positive_nor_a_miss():
    """VOC "difficult"-only objects are metrics.IGNORE in the targets: predicting them or not is no error."""
    from cdul_rt.labelfile import LabelTable
    from cdul_rt.metrics import IGNORE
    from cdul_rt.report.data import ReportData, image_records

    scores = np.array([[0.9, 0.9, 0.1, 0.1]], np.float32)
    table = LabelTable(["a.jpg"], CLASSES, scores)
    targets = np.array([[IGNORE, 0, IGNORE, 1]])  # labels cat (ignored) and dog (wrong); car missed, person ignored
    (rec,) = image_records(ReportData(table, [[0, 1]], targets=targets), [None])
    assert rec[5] == [CLASSES.index("dog")] and rec[6] == [CLASSES.index("car")]


def test_a_changed_image_gets_a_new_thumbnail(labeled, tmp_path):
    """`--thumbs folder` reuses the thumbnails of a previous report, but not those of images that changed since."""
    import os
    from urllib.parse import unquote

    from PIL import Image

    labels, _, paths, _, _ = labeled
    out = tmp_path / "r.html"
    run(labels, "--out", out, "--thumbs", "folder")
    before = {rec[0]: rec[1] for rec in page_data(out.read_text(encoding="utf-8"))["images"]}
    image = tmp_path / "images" / paths[0]
    with Image.open(image) as im:
        size, fmt = im.size, im.format
    Image.new("RGB", size, (255, 0, 0)).save(image, fmt)
    os.utime(image, ns=(1, 1))  # a different mtime even on filesystems with coarse timestamps
    run(labels, "--out", out, "--thumbs", "folder")
    after = {rec[0]: rec[1] for rec in page_data(out.read_text(encoding="utf-8"))["images"]}
    assert after[paths[0]] != before[paths[0]] and all(after[p] == before[p] for p in paths[1:])
    with Image.open(out.parent / unquote(after[paths[0]])) as thumb:
        assert thumb.convert("RGB").getpixel((0, 0))[0] > 200  # the new, red image
    assert not list((out.parent / "r_files").glob(".*partial"))
