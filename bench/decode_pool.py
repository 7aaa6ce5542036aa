"""Old pickling decode pool vs the shared-memory ring, side by side in one run (issue 12 item 4, issue 13 item 8).

    python bench/decode_pool.py [--images 96] [--workers 2] [--rounds 3] [--size 640x480]

Two measurements, each in interleaved rounds (old, ring, old, ring, ...) so that load drift on a shared machine hits
both alike; the median round is reported:

1. decode -> batch assembly at 224 px (ViT-B-32's input), g = 3: images/s until every batch of 8 images is one
   uint8 array, and the main process's CPU time per image (what limits scaling with more workers: the old pool
   unpickles 1.5 MB per image there, the ring only copies the slots into the batch).
2. end-to-end labeling loop on the shipped tiny CLIP (cdul-tiny, 64 px), batch 8: old = pickled crops ->
   ``normalize_batch`` (float32 on the host) -> ``runner.infer``; ring = slots -> ``runner.infer_uint8`` (normalised
   by the runner) -> release. Same runner, same images; no file writing (identical in both).

The old path is kept here, as it was in ``cdul_rt/decode.py`` before the ring, only to be measured against.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cdul_rt.bench.images import write_jpeg_folder
from cdul_rt.decode import decode_stream, load_crops
from cdul_rt.preprocess import PreprocessConfig, normalize_batch

BATCH = 8


def _load_many(paths, grid, cfg):
    return [load_crops(p, grid, cfg) for p in paths]


def old_stream(paths, grid, cfg, workers, chunk=4, prefetch=64):
    """The pre-ring pool: ProcessPoolExecutor, crops pickled back to the main process, chunks of 4 images."""
    import multiprocessing as mp

    pending, it = deque(), iter(paths)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        def submit():
            batch = [p for _, p in zip(range(chunk), it)]
            if batch:
                pending.append(pool.submit(_load_many, batch, grid, cfg))
            return bool(batch)

        while len(pending) * chunk < prefetch and submit():
            pass
        while pending:
            results = pending.popleft().result()
            submit()
            yield from results


def ring_stream(paths, grid, cfg, workers):
    return decode_stream(paths, grid, cfg, workers, prefetch=max(16, 4 * workers, BATCH), hold=BATCH)


def _batches(stream):
    batch = []
    for item in stream:
        batch.append(item)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def assemble(kind, paths, cfg, workers):
    """decode -> uint8 batches; returns (images/s, main-process CPU ms per image)."""
    stream = old_stream(paths, 3, cfg, workers) if kind == "old" else ring_stream(paths, 3, cfg, workers)
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for batch in _batches(stream):
        x = np.concatenate([it.crops for it in batch])
        for it in batch:
            it.release()
        n += x.shape[0] // 10
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return n / wall, 1000 * cpu / n


def label_loop(kind, paths, session, workers):
    runner, cfg, text = session.runner, session.preprocess, session.text_embeddings
    stream = old_stream(paths, 3, cfg, workers) if kind == "old" else ring_stream(paths, 3, cfg, workers)
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for batch in _batches(stream):
        if kind == "old":
            x = normalize_batch(np.concatenate([it.crops for it in batch]), cfg)
            runner.infer({"crops": x, "text_embeddings": text})
        else:
            runner.infer_uint8([it.crops for it in batch], text, cfg)
            for it in batch:
                it.release()
        n += len(batch)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return n / wall, 1000 * cpu / n


def pipe_bytes(path, cfg) -> tuple[int, int]:
    """Bytes pickled through pipes per image: old = the Decoded with its crops (one image of a chunk's result);
    ring = the task ``(seq, slot, path)`` plus the answer ``(seq, None)``."""
    import pickle

    old = len(pickle.dumps(load_crops(path, 3, cfg), protocol=pickle.HIGHEST_PROTOCOL))
    ring = sum(len(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)) for m in ((12345, 17, path), (12345, None)))
    return old, ring


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="640x480")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    from cdul_rt.pipeline import LabelConfig, open_session
    from cdul_rt.vocab import load_vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(write_jpeg_folder(Path(tmp) / "imgs", args.images, (w, h)))
        vocab = load_vocabulary("synth")
        session = open_session(LabelConfig(input=Path(tmp), out=Path(tmp) / "o.jsonl", model="cdul-tiny",
                                           classes="synth"), vocab)
        vit = PreprocessConfig(size=224)
        old_b, ring_b = pipe_bytes(paths[0], vit)
        rows = {k: [] for k in ("assemble old", "assemble ring", "label old", "label ring")}
        with session.runner:
            label_loop("ring", paths[:8], session, args.workers)  # warm-up (first encoder call, spawn imports)
            for r in range(args.rounds):
                for kind in ("old", "ring"):
                    rows[f"assemble {kind}"].append(assemble(kind, paths, vit, args.workers))
                for kind in ("old", "ring"):
                    rows[f"label {kind}"].append(label_loop(kind, paths, session, args.workers))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} img/s" for k, v in rows.items()), flush=True)
    print(f"\n{args.images} photo-like {w}x{h} JPEGs, {args.workers} workers, batch {BATCH}, median of "
          f"{args.rounds} interleaved rounds\n")
    print("| measurement | path | images/s | main-process CPU ms / image |")
    print("|---|---|---|---|")
    med = {}
    for k, v in rows.items():
        ips = statistics.median(x[0] for x in v)
        cpu = statistics.median(x[1] for x in v)
        med[k] = (ips, cpu)
        what, path = k.split()
        label = "decode -> batch assembly (224 px, g = 3)" if what == "assemble" else "labeling loop (cdul-tiny, 64 px)"
        print(f"| {label} | {'pickled (old)' if path == 'old' else 'shared-memory ring'} | {ips:.1f} | {cpu:.2f} |")
    print(f"\nbytes through pipes per image (224 px, g = 3): pickled {old_b:,}, ring {ring_b:,}")
    for what in ("assemble", "label"):
        o, r = med[f"{what} old"], med[f"{what} ring"]
        print(f"\n{what}: ring / old = {r[0] / o[0]:.2f}x images/s, main-process CPU per image "
              f"{r[1] / o[1]:.2f}x of old")


if __name__ == "__main__":
    main()
