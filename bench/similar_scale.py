"""How long `cdul-rt similar`'s brute-force search takes over N saved embeddings (float16, memory-mapped .npy).

    python bench/similar_scale.py --n 1000000 --dim 512

Writes a random L2-normalised float16 matrix to a temp .npy (as `label --save-embeddings` does), then times
`cdul_rt.similar.top_matches` over the memory-mapped file: the first query (pages read from disk or the page cache)
and the median of the next five.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cdul_rt.similar import top_matches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emb.npy"
        mm = np.lib.format.open_memmap(path, "w+", np.float16, (args.n, args.dim))
        for i in range(0, args.n, 100_000):
            block = rng.standard_normal((min(100_000, args.n - i), args.dim), dtype=np.float32)
            mm[i:i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        mm.flush()
        del mm
        emb = np.load(path, mmap_mode="r")
        times = []
        for _ in range(6):
            q = rng.standard_normal(args.dim).astype(np.float32)
            q /= np.linalg.norm(q)
            t = time.perf_counter()
            top_matches(emb, q, args.top)
            times.append(time.perf_counter() - t)
        print(f"n={args.n} dim={args.dim} file={path.stat().st_size / 1e9:.2f} GB  first query {times[0]:.2f} s  "
              f"median of next 5 {statistics.median(times[1:]):.2f} s")


if __name__ == "__main__":
    main()
