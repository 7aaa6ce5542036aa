"""`cdul-rt report` at 100,000 images: page size, render time, and in headless Chromium the load, filter, sort and
page times of the page's own script (no thumbnails: what is measured is the data blob and the paging).

    python bench/report_scale.py --n 100000            # needs Debian's chromium and playwright (the dev extra)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cdul_rt.labelfile import write_label_file
from cdul_rt.report.render import render_report
from cdul_rt.vocab import load_vocabulary


def browser_times(page_file: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    times, errors = {}, []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.on("pageerror", lambda e: errors.append(str(e)))
        for name, action in (("load", lambda: (tab.goto(page_file.as_uri()), tab.wait_for_selector(".card"))),
                             ("filter by a class", lambda: tab.select_option("#cls", "0")),
                             ("back to all", lambda: tab.select_option("#cls", "-1")),
                             ("sort by most labels", lambda: tab.select_option("#sort", "labels")),
                             ("next page", lambda: tab.click("#next"))):
            start = time.perf_counter()
            action()
            times[name] = time.perf_counter() - start
        browser.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    classes = list(load_vocabulary("coco").classes)
    scores = (np.random.default_rng(0).random((args.n, len(classes))) ** 6).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        labels = write_label_file(Path(tmp) / "labels.npz", [f"d{i % 100}/img_{i:06d}.jpg" for i in range(args.n)],
                                  classes, scores)
        out = Path(tmp) / "report.html"
        start = time.perf_counter()
        render_report(labels, out, thumbs="none", progress=False)
        print(f"{args.n} images, {len(classes)} classes: page {out.stat().st_size / 1e6:.1f} MB, rendered in "
              f"{time.perf_counter() - start:.1f} s")
        for name, seconds in browser_times(out).items():
            print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
