"""The report page in a real headless Chromium: filtering by class and score changes the visible cards correctly,
paging works, nothing fails in the console; a screenshot of the synthetic world's report (with ground truth) is
saved under the test's tmp dir (and copied to $CDUL_RT_REPORT_SCREENSHOT when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main

CHROMIUM = os.environ.get("CDUL_RT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; .ci/run does)"),
]


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    """The synthetic world (24 scenes) labeled by the tiny CLIP, and its report with ground truth."""
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.pipeline import LabelConfig, label_folder
    from cdul_rt.synth.scenes import write_scene_folder

    root = tmp_path_factory.mktemp("world")
    world = write_scene_folder(root / "world", 24, seed=0)
    labels = root / "labels.jsonl"
    label_folder(LabelConfig(input=world / "images", out=labels, classes="synth", model="cdul-tiny", workers=0,
                             progress=False))
    out = root / "report.html"
    result = CliRunner().invoke(main, ["report", str(labels), "--gt", str(world / "labels.jsonl"), "--out", str(out),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    return out, read_label_file(labels), root


@pytest.fixture(scope="module")
def page(synthetic_report):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    out, _, _ = synthetic_report
    with sync_api.sync_playwright() as pw:
        # headless, with a fresh temporary profile (playwright's launch makes one per browser)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        messages: list[str] = []
        tab.on("console", lambda m: messages.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        tab.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        tab.on("requestfailed", lambda r: messages.append(f"request failed: {r.url}"))
        tab.goto(out.as_uri())
        tab.wait_for_selector(".card", timeout=10_000)
        yield tab, messages
        browser.close()


def visible_paths(tab) -> list[str]:
    return tab.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")


def test_filter_by_class_and_score_shows_the_right_cards(page, synthetic_report):
    from cdul_rt.labelfile import select_labels

    tab, messages = page
    _, table, _ = synthetic_report
    threshold = table.meta["config"]["threshold"]
    labels = {p: select_labels(s, table.classes, threshold, None) for p, s in zip(table.paths, table.scores)}
    assert len(visible_paths(tab)) == len(table.paths)  # 24 < one page of 48
    counts = {c: sum(c in ls for ls in labels.values()) for c in table.classes}
    # the class with the most images where it is among the 3 best scores but not a label: the page holds its score
    # there too, so only a filter on the labels themselves shows exactly the labeled images
    top3 = np.argsort(-table.scores, axis=1)[:, :3]
    near = {c: sum(j in top3[i] and c not in labels[p] for i, p in enumerate(table.paths))
            for j, c in enumerate(table.classes)}
    cls = max(table.classes, key=lambda c: (near[c], counts[c]))
    assert near[cls] > 0 and counts[cls] > 0
    tab.select_option("#cls", str(table.classes.index(cls)))
    shown = visible_paths(tab)
    assert sorted(shown) == sorted(p for p, ls in labels.items() if cls in ls)
    assert tab.inner_text("#count").startswith(f"{counts[cls]} of {len(table.paths)}")
    j = table.classes.index(cls)
    class_scores = [float(table.scores[table.paths.index(p), j]) for p in shown]
    assert class_scores == sorted(class_scores, reverse=True)  # most confident first, by the chosen class
    # score range on the chosen class
    tab.fill("#smin", "0.8")
    tab.dispatch_event("#smin", "change")
    expected = sorted(p for p, ls in labels.items() if cls in ls and table.scores[table.paths.index(p), j] >= 0.8)
    assert sorted(visible_paths(tab)) == expected
    tab.fill("#smin", "0")
    tab.dispatch_event("#smin", "change")
    tab.select_option("#cls", "-1")
    assert len(visible_paths(tab)) == len(table.paths)
    assert not messages, messages


def test_false_positive_filter_and_screenshot(page, synthetic_report):
    tab, messages = page
    out, table, root = synthetic_report
    tab.select_option("#kind", "fp")
    fp_cards = visible_paths(tab)
    for path in fp_cards:
        assert tab.locator(f'.card[data-path="{path}"] .chip.fp').count() >= 1
    assert len(fp_cards) < len(table.paths)
    tab.select_option("#kind", "label")
    tab.select_option("#sort", "labels")
    counts = [tab.locator(f'.card[data-path="{p}"] .chip:not(.other):not(.miss)').count() for p in visible_paths(tab)]
    assert counts == sorted(counts, reverse=True)
    tab.select_option("#sort", "desc")
    shot = root / "report-screenshot.png"
    tab.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("CDUL_RT_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CDUL_RT_REPORT_SCREENSHOT"])
    assert not messages, messages
