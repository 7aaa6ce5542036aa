"""Numbers behind the billion-image plan (README, "Scale-out with Ray"), measured on this machine.

    PYTHONPATH=. python bench/ray_scale.py listing --paths 1000000     # driver memory per listed path
    PYTHONPATH=. python bench/ray_scale.py actor --model cdul-tiny --images 64   # images/s of one engine actor
    PYTHONPATH=. python bench/ray_scale.py cluster --images 48         # head + 2 workers (ray.cluster_utils)
    PYTHONPATH=. python bench/ray_scale.py writer --rows 200000        # the driver's shard writer, rows/s
    PYTHONPATH=. python bench/ray_scale.py decode --images 64          # one decode task's images/s

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

    import tracemalloc

    gc.collect()
    before = _rss()
    tracemalloc.start()
    if kind == "tuples":
        held = list(_names(n))
        extra = {}
    elif kind == "blocks":
        import ray

        from cdul_rt.distributed.ray_label import listing_blocks

        ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=max(300 << 20, n * 150))
        ray.get(listing_blocks(_names(100), set(), 32, ray.put)[0])  # warm-up: imports are not per path
        gc.collect()
        before = _rss()
        tracemalloc.stop()
        tracemalloc.start()
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
        tracemalloc.stop()
        tracemalloc.start()
        held = _paths_of([tmp])
        extra = {"shard_bytes": tmp.stat().st_size}
    gc.collect()
    after = _rss()
    python_bytes = tracemalloc.get_traced_memory()[0]  # Python objects still alive
    out = {"kind": kind, "paths": n, "driver_bytes": after - before, "bytes_per_path": round((after - before) / n, 1),
           "python_object_bytes_per_path": round(python_bytes / n, 1), **extra}
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
    m = args.paths / 1e6
    print(f"driver memory per million listed paths (heap growth, of which Python objects): list of tuples "
          f"{rows[0]['driver_bytes'] / 1e6 / m:.0f} MB ({rows[0]['python_object_bytes_per_path']:.0f}); streamed "
          f"Arrow blocks {rows[1]['driver_bytes'] / 1e6 / m:.0f} MB ({rows[1]['python_object_bytes_per_path']:.0f}) "
          f"+ {(rows[1]['object_store_bytes'] or 0) / 1e6 / m:.0f} MB in the object store; resume set "
          f"{rows[2]['driver_bytes'] / 1e6 / m:.0f} MB ({rows[2]['python_object_bytes_per_path']:.0f})")


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


def writer(args) -> None:
    """The driver's writer: result rows per second it turns into shards, and bytes per row on disk (80 classes)."""
    import tempfile

    import numpy as np

    from cdul_rt.distributed.shards import ShardWriter, label_shards, prepare_output
    from cdul_rt.vocab import load_vocabulary

    classes = list(load_vocabulary("coco").classes)
    out = Path(tempfile.mkdtemp()) / "labels.ray"
    prepare_output(out, False)
    w = ShardWriter(out, classes, shard_rows=args.shard_rows, flush_seconds=1e9)
    rng = np.random.default_rng(0)
    # sigmoid-like scores, a fresh batch each time (repeated rows would compress unrealistically well)
    pool = (1 / (1 + np.exp(-rng.normal(-3, 2, (min(args.rows, 100_000), len(classes)))))).astype(np.float32)
    t0 = time.perf_counter()
    for b in range(args.rows // args.batch):
        i0 = (b * args.batch) % (len(pool) - args.batch + 1)
        w.add([f"{b:07d}/{i:05d}.jpg" for i in range(args.batch)], pool[i0:i0 + args.batch])
    w.flush()
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in label_shards(out))
    print(json.dumps({"rows": w.written, "classes": len(classes), "seconds": round(dt, 2),
                      "rows_per_s": round(w.written / dt), "shard_bytes_per_row": round(size / w.written, 1),
                      "load_avg": os.getloadavg()[0]}))


def decode(args) -> None:
    """One decode task's images/s (1 CPU): 640x480 JPEGs -> 1 + 3x3 crops of 224 px, as the Ray decode stage."""
    import tempfile

    import numpy as np
    from PIL import Image

    from cdul_rt.distributed.ray_label import decode_batch
    from cdul_rt.preprocess import PreprocessConfig

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    uris = []
    for i in range(8):  # smooth photo-like content (noise would be an unrealistically large JPEG)
        y, x = np.mgrid[0:480, 0:640]
        img = np.stack([(x * (i + 1) + y) % 256, (y * 2 + i * 30) % 256, (x + y * (i + 2)) % 256], -1)
        img = (img + rng.integers(0, 16, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp / f"{i}.jpg", quality=90)
        uris.append(str(tmp / f"{i}.jpg"))
    batch = {"path": np.asarray(uris, dtype=object), "uri": np.asarray(uris, dtype=object)}
    pre = PreprocessConfig(size=224)
    decode_batch(batch, 3, pre, 10**9)
    n, t0 = 0, time.perf_counter()
    while n < args.images:
        decode_batch(batch, 3, pre, 10**9)
        n += len(uris)
    dt = time.perf_counter() - t0
    print(json.dumps({"images": n, "seconds": round(dt, 2), "images_per_s_per_cpu": round(n / dt, 1),
                      "jpeg_bytes": int(np.mean([Path(u).stat().st_size for u in uris])),
                      "crop_bytes_per_image": 10 * 224 * 224 * 3, "load_avg": os.getloadavg()[0]}))


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
    p = sub.add_parser("writer")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--shard-rows", type=int, default=50_000)
    p = sub.add_parser("decode")
    p.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    {"listing": listing, "actor": actor, "cluster": cluster, "writer": writer, "decode": decode}[args.cmd](args)


if __name__ == "__main__":
    main()
