"""Scaling of ``cdul-rt label``: throughput vs batch size and decode workers, peak memory vs folder size.

    python -m cdul_rt.bench.scaling memory --sizes 1000,10000 [--model TINY_CONFIG.json]
    python -m cdul_rt.bench.scaling grid --images 16 --batch-sizes 1,4,8,16 --workers 0,1,2 [--model ViT-B-32]

Each configuration runs ``cdul-rt label`` as a child process; a sampler thread sums the RSS of that process and
all its descendants (the decode workers) every 50 ms, so the peak includes the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_rss(pid: int) -> int:
    """Bytes of resident memory of ``pid`` and all its descendants (0 once it has exited)."""
    kids, total, todo = _children_map(), 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/statm", encoding="utf-8") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_label(folder: Path, out: Path, args: list[str], threads: int | None = None) -> dict:
    """Run ``cdul-rt label`` on ``folder``; its images/s (from the meta file) and peak tree RSS.

    ``threads`` sets OMP_NUM_THREADS (torch's intra-op threads) for the child; ``None`` keeps torch's default.
    """
    cmd = [sys.executable, "-m", "cdul_rt", "label", str(folder), "--out", str(out), "--overwrite", "-q", *args]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())["last_run"]
    return {"images": meta["labeled"], "seconds": meta["seconds"], "images_per_s": meta["images_per_second"],
            "peak_rss_mib": round(peak / 2**20, 1)}


def _model_args(ns) -> list[str]:
    return ["--model", ns.model, "--pretrained", ns.pretrained, "--classes", ns.classes,
            "--runtime", ns.runtime, "--precision", ns.precision]


def memory(ns) -> list[dict]:
    from cdul_rt.bench.images import write_jpeg_folder

    rows = []
    for n in (int(x) for x in ns.sizes.split(",")):
        folder = ns.work_dir / f"mem-{n}"
        write_jpeg_folder(folder, n, (ns.width, ns.height))
        r = run_label(folder, ns.work_dir / f"mem-{n}.jsonl",
                      _model_args(ns) + ["--batch-size", str(ns.batch_size), "--workers", str(ns.workers)])
        rows.append({"folder_images": n, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def grid(ns) -> list[dict]:
    from cdul_rt.bench.images import write_jpeg_folder

    folder = ns.work_dir / f"grid-{ns.images}"
    write_jpeg_folder(folder, ns.images, (ns.width, ns.height))
    rows = []
    threads_list = [None if t == "default" else int(t) for t in ns.threads_list.split(",")]
    for threads in threads_list:
        for workers in (int(x) for x in ns.workers_list.split(",")):
            for batch in (int(x) for x in ns.batch_sizes.split(",")):
                r = run_label(folder, ns.work_dir / "grid.jsonl",
                              _model_args(ns) + ["--batch-size", str(batch), "--workers", str(workers)] + ns.extra,
                              threads)
                rows.append({"batch_size": batch, "workers": workers, "torch_threads": threads or "default", **r,
                             "load_avg": os.getloadavg()[0]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("memory", "grid"))
    from cdul_rt.synth import TINY_CLIP_CONFIG

    p.add_argument("--model", default=str(TINY_CLIP_CONFIG), help="default: the tiny CLIP config shipped with cdul-rt")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--classes", default="coco")
    p.add_argument("--runtime", default="torch")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-sizes", default="1,4,8,16")
    p.add_argument("--workers-list", default="0,1,2")
    p.add_argument("--threads-list", default="default", help="torch threads per run: 'default' or numbers")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `cdul-rt label` options")
    p.add_argument("--work-dir", type=Path, default=Path("bench-work/scaling"))
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    ns.work_dir.mkdir(parents=True, exist_ok=True)
    rows = memory(ns) if ns.what == "memory" else grid(ns)
    if ns.json:
        ns.json.write_text(json.dumps({"what": ns.what, "args": {k: str(v) for k, v in vars(ns).items()},
                                       "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
