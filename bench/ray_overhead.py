"""Plain ``cdul-rt label`` vs ``--cluster ray`` with one actor on the same folder: the distributed path's overhead.

Both run as the CLI a user types, on the same resources: plain label encodes in its main process with one decode
worker (``--workers 1``); Ray gets one 1-CPU engine actor and one decode task on a local instance it starts itself.
Reported per run: the whole command's wall time (process start, imports, model load, Ray start, labeling), the
labeling time the command prints, and the CPU seconds of the command's whole process tree (on a shared machine the
fairer cost: wall time there depends on how many processes each path has runnable); then the max |difference| of
the two outputs' scores.

    python bench/ray_overhead.py --images 200                    # a small ViT at 224 px: the pipeline's own cost
    python bench/ray_overhead.py --images 48 --model ViT-B-32    # real encoder compute per image

A measurement, not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Real 224-px crops (10 per image, 1.5 MB through the pipeline) with a cheap encoder, so the table shows what the
# distributed path adds around the model rather than the model's own speed. Random weights: nothing is downloaded.
BENCH_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
LABELED = re.compile(r"labeled (\d+) images in ([\d.]+)s \(([\d.]+) img/s\)")


def _become_subreaper() -> None:
    """Descendants orphaned by the command (Ray's workers when raylet exits first) are reparented to this process,
    so reaping them adds their CPU time to RUSAGE_CHILDREN. Linux only."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_orphans(timeout: float = 60.0) -> bool:
    """Wait for every descendant left behind; False if some still run after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list[str]) -> dict:
    """Wall time and CPU time of the command's whole process tree (decode workers, Ray's raylet/GCS and its
    workers are all descendants, reaped before the command returns)."""
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not _reap_orphans():
        print(f"warning: processes of {cmd[3]} outlived it by 60 s; their CPU time is not counted", file=sys.stderr)
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    m = LABELED.search(proc.stdout)
    if m is None:
        sys.exit(f"no summary line in the output of {' '.join(cmd)}:\n{proc.stdout}")
    return {"images": int(m.group(1)), "label_s": float(m.group(2)), "img_per_s": float(m.group(3)),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="640x480", help="JPEG size WIDTHxHEIGHT")
    ap.add_argument("--model", default=None, help="any --model of label (default: a small 224-px ViT config)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2, help="runs per path, alternating plain and ray; medians shown")
    ap.add_argument("--workdir", type=Path, default=None, help="keep images and outputs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from cdul_rt.bench.images import parse_size, write_jpeg_folder
    from cdul_rt.distributed.shards import read_shards
    from cdul_rt.labelfile import read_label_file

    _become_subreaper()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    folder = work / "images"
    write_jpeg_folder(folder, args.images, parse_size(args.size))
    if args.model is None:
        args.model = str(work / "bench-vit-224.json")
        Path(args.model).write_text(json.dumps(BENCH_CLIP))
    common = ["label", str(folder), "--model", args.model, "--pretrained", "none", "--classes", "coco", "-q",
              "--batch-size", str(args.batch_size), "--overwrite"]
    cli = [sys.executable, "-m", "cdul_rt"]
    plain_out, ray_out = work / "plain.jsonl", work / "labels.ray"
    commands = {
        "plain": cli + common + ["--out", str(plain_out), "--workers", "1"],
        "ray, 1 actor": cli + common + ["--out", str(ray_out), "--cluster", "ray", "--actors", "1"],
    }
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # alternate, so drifting load on a shared machine hits both paths alike
        for name, cmd in commands.items():
            runs[name].append(run(cmd))
    results = {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()}
    plain, dist = read_label_file(plain_out), read_shards(ray_out)
    order = [plain.paths.index(p) for p in dist.paths]
    diff = float(np.abs(dist.scores - plain.scores[order]).max())

    base = results["plain"]
    print(f"{args.images} JPEGs {args.size}, model {args.model} (random weights), batch {args.batch_size}, "
          f"median of {args.repeat} alternating runs\n")
    print("| path | wall (s) | labeling (s) | img/s | CPU (s) | wall vs plain | CPU vs plain |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['label_s']:.1f} | {r['img_per_s']:.2f} | {r['cpu_s']:.1f} | "
              f"{r['wall_s'] / base['wall_s']:.2f}x | {r['cpu_s'] / base['cpu_s']:.2f}x |")
    for name, rs in runs.items():
        print(f"{name}: wall {[r['wall_s'] for r in rs]} s, labeling {[r['label_s'] for r in rs]} s, "
              f"CPU {[r['cpu_s'] for r in rs]} s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"\nmax |S_final(ray) - S_final(plain)| = {diff:.2e} over {len(dist.paths)} images")
    for name, cmd in commands.items():
        print(f"{name}: {' '.join(cmd[1:])}")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "size": args.size, "model": args.model,
                                         "batch_size": args.batch_size, "results": results, "runs": runs,
                                         "max_abs_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
