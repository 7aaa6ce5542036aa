"""Numbers behind the billion-image plan (README, "Scale-out with Ray"), measured on this machine.

    PYTHONPATH=. python bench/ray_scale.py listing --paths 1000000     # driver memory per listed path
    PYTHONPATH=. python bench/ray_scale.py actor --model cdul-tiny --images 64   # images/s of one engine actor
    PYTHONPATH=. python bench/ray_scale.py cluster --images 48         # head + 2 workers (ray.cluster_utils)

``listing``: the driver's memory for N listed paths three ways, each in a fresh process: the old list of
``(path, uri)`` tuples, the streamed Arrow blocks put in Ray's object store (what ``label --cluster ray`` does now:
the driver keeps one ObjectRef per block), and the resume set read from a shard's ``path`` column. ``actor``: what
one engine actor scores per second on pre-cut crops (1 torch thread, as Ray gives a 1-CPU actor), i.e. the encoder
stage alone. ``cluster``: a whole job on a simulated 3-node cluster, rows per node.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _rss() -> int:
    """The process's anonymous memory (its heap): RSS would also count the object store's shared-memory pages
    that ray.put wrote through this process, which live in the object store, not the driver."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Anonymous: line in /proc/self/smaps_rollup")


def _names(n: int):
    for i in range(n):  # img2dataset-like layout: 10k files per prefix
        p = f"{i // 10_000:05d}/{i:09d}.jpg"
        yield p, f"s3://bucket/images/{p}"


def _listing_child(kind: str, n: int) -> dict:
    import gc

    gc.collect()
    before = _rss()
    if kind == "tuples":
        held = list(_names(n))
        extra = {}
    elif kind == "blocks":
        import ray

        from cdul_rt.distributed.ray_label import listing_blocks

        ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=max(300 << 20, n * 400))
        before = _rss()
        held, rows = listing_blocks(_names(n), set(), 32, ray.put)
        used = ray.available_resources().get("object_store_memory")
        total = ray.cluster_resources().get("object_store_memory")
        extra = {"blocks": len(held), "object_store_bytes": int(total - used) if used is not None else None}
    else:  # resume set from a shard's path column
        import tempfile

        import pyarrow as pa
        import pyarrow.parquet as pq

        from cdul_rt.distributed.shards import _paths_of

        tmp = Path(tempfile.mkdtemp()) / "part-x.parquet"
        pq.write_table(pa.table({"path": [p for p, _ in _names(n)]}), tmp)
        import gc as _gc

        _gc.collect()
        before = _rss()
        held = _paths_of([tmp])
        extra = {"shard_bytes": tmp.stat().st_size}
    gc.collect()
    after = _rss()
    out = {"kind": kind, "paths": n, "driver_bytes": after - before, "bytes_per_path": round((after - before) / n, 1),
           **extra}
    if kind == "blocks":
        import ray

        ray.shutdown()
    del held
    return out


def listing(args) -> None:
    rows = []
    for kind in ("tuples", "blocks", "done-set"):
        r = subprocess.run([sys.executable, __file__, "_listing_child", kind, str(args.paths)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    for row in rows:
        print(json.dumps(row))
    print(f"per million listed paths: tuples {rows[0]['bytes_per_path']:.0f} MB, Arrow blocks in the object store "
          f"{rows[1]['bytes_per_path']:.0f} MB in the driver (+{(rows[1]['object_store_bytes'] or 0) / 1e6:.0f} MB "
          f"in the object store), resume set {rows[2]['bytes_per_path']:.0f} MB")


def actor(args) -> None:
    import numpy as np
    import torch

    from cdul_rt.distributed.ray_label import LabelActor, _describe
    from cdul_rt.pipeline import LabelConfig

    torch.set_num_threads(1)  # a 1-CPU Ray actor
    cfg = LabelConfig(input=Path("."), out=Path("unused"), model=args.model, pretrained=args.pretrained,
                      classes="coco", batch_size=args.batch_size, precision=args.precision, progress=False)
    expected, pre = _describe(cfg)
    a = LabelActor(cfg, expected)
    rng = np.random.default_rng(0)
    s, k = pre.size, 1 + cfg.grid**2
    batch = {"path": np.asarray([f"{i}.jpg" for i in range(args.batch_size)], dtype=object),
             "crops": rng.integers(0, 256, (args.batch_size, k, s, s, 3), dtype=np.uint8),
             "error": np.asarray([""] * args.batch_size, dtype=object)}
    a(batch)  # warm-up
    n = 0
    t0 = time.perf_counter()
    while n < args.images:
        a(batch)
        n += args.batch_size
    dt = time.perf_counter() - t0
    print(json.dumps({"model": args.model, "precision": args.precision, "batch": args.batch_size, "images": n,
                      "seconds": round(dt, 2), "images_per_s_per_actor": round(n / dt, 2),
                      "load_avg": os.getloadavg()[0]}))


def cluster(args) -> None:
    import tempfile

    import ray
    from ray.cluster_utils import Cluster
    from ray._private.utils import get_ray_address_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_images

    from cdul_rt.distributed.ray_label import label_with_ray
    from cdul_rt.labelfile import read_meta
    from cdul_rt.pipeline import LabelConfig

    node = {"num_cpus": 1, "object_store_memory": 100 << 20}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(**node)
        Path(get_ray_address_file(None)).unlink(missing_ok=True)
        c.wait_for_nodes()
        ray.init(address=c.address)
        tmp = Path(tempfile.mkdtemp())
        make_images(tmp / "images", args.images, sizes=((480, 640),))
        cfg = LabelConfig(input=tmp / "images", out=tmp / "labels.ray", model=args.model, pretrained=args.pretrained,
                          classes="coco", batch_size=args.batch_size, progress=False)
        t0 = time.perf_counter()
        s = label_with_ray(cfg, source=str(tmp / "images"))
        wall = time.perf_counter() - t0
        meta = read_meta(tmp / "labels.ray")
        print(json.dumps({"nodes": 3, "images": s.labeled, "job_images_per_s": round(s.images_per_second, 2),
                          "wall_s_with_startup": round(wall, 1), "rows_per_node": meta["cluster"]["rows_per_node"],
                          "plan": {k: meta["cluster"][k] for k in ("actors", "decode_tasks")},
                          "load_avg": os.getloadavg()[0]}))
    finally:
        ray.shutdown()
        c.shutdown()
        Path(get_ray_address_file(None)).unlink(missing_ok=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_listing_child":
        print(json.dumps(_listing_child(sys.argv[2], int(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("listing")
    p.add_argument("--paths", type=int, default=1_000_000)
    for name in ("actor", "cluster"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="cdul-tiny")
        p.add_argument("--pretrained", default=None)
        p.add_argument("--precision", default="fp32")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--images", type=int, default=48)
    args = ap.parse_args()
    {"listing": listing, "actor": actor, "cluster": cluster}[args.cmd](args)


if __name__ == "__main__":
    main()
