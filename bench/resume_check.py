"""Issue 2's acceptance run: label 200 generated images + 3 broken files, kill -9 mid-way, resume, count rows.

    python bench/resume_check.py [--images 200] [--model tiny|ViT-B-32]

Prints the rows/failures after each step and the images/s of an uninterrupted run. Uses a tiny random open_clip
config by default (no downloads); `--model ViT-B-32` measures the real architecture with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_CLIP_CONFIG, make_broken, make_images  # noqa: E402


def _rows(path: Path) -> list[str]:
    return [json.loads(line)["path"] for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdul-resume-"))
    folder = tmp / "images"
    make_images(folder, args.images, sizes=((480, 640), (640, 480), (500, 375)))
    make_broken(folder)
    model = args.model
    if model == "tiny":
        (tmp / "tiny.json").write_text(json.dumps(TINY_CLIP_CONFIG))
        model = str(tmp / "tiny.json")
    out = tmp / "labels.jsonl"
    cmd = [sys.executable, "-m", "cdul_rt", "label", str(folder), "--model", model, "--pretrained", "none",
           "--classes", "coco", "--out", str(out), "-q", "--batch-size", str(args.batch_size)]
    env = {**os.environ, "CDUL_RT_CACHE": str(tmp / "cache")}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(_rows(out)) < args.images // 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(out.read_bytes().splitlines()) if out.exists() else 0
    print(f"killed (SIGKILL) after {killed_at} rows")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(r.stdout.strip())
    rows = _rows(out)
    failures = [json.loads(line) for line in Path(str(out) + ".failures.jsonl").read_text().splitlines()]
    print(f"after resume: {len(rows)} rows, {len(set(rows))} unique, {len(failures)} failures: "
          + ", ".join(f"{f['path']} ({f['reason'][:40]})" for f in failures))

    fresh = tmp / "fresh.jsonl"
    t0 = time.perf_counter()
    r = subprocess.run([*cmd[:-5], "--out", str(fresh), "-q", "--batch-size", str(args.batch_size)], env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    meta = json.loads(Path(str(fresh) + ".meta.json").read_text())["last_run"]
    print(f"uninterrupted run: {meta['labeled']} images, {meta['images_per_second']:.2f} img/s in the labeling loop, "
          f"{args.images / wall:.2f} img/s including process start and model load ({wall:.1f}s)")


if __name__ == "__main__":
    main()
