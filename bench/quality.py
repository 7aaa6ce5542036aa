#!/usr/bin/env python
"""Pseudo-label quality on the synthetic world (paper Table 3 in miniature) with the shipped tiny CLIP.

    python bench/quality.py --scenes 300 --seed 2026 --json bench/results/quality.json --markdown -

Held-out scenes (the tiny CLIP never saw a scene, only single-object views): mAP of `global`, `avg`, `max` and
`cdul` against the ground truth, the cdul - global gap, mAP by number of objects per scene, and sweeps over zeta,
lambda and the grid size g (1..4). Writes JSON and/or a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cdul_rt.aggregation import DEFAULT_LAM, DEFAULT_ZETA, TABLE3_ORDER, Aggregation
from cdul_rt.synth.evaluate import (class_text_embeddings, crop_scores, load_tiny_clip, make_scenes, mode_map,
                                    mode_table, single_object_accuracy)

ZETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
GRIDS = (1, 2, 3, 4)


def run(n: int, seed: int, size: int, weights: str | None, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    t0 = time.time()
    bundle = load_tiny_clip(weights)
    text = class_text_embeddings(bundle)
    scenes = make_scenes(n, seed, size)
    scores = {g: crop_scores(bundle, scenes.images, g, text) for g in GRIDS}
    y = scenes.targets
    s3 = scores[3]
    counts = y.sum(1)
    by_count = {}
    for lo, hi in ((1, 1), (2, 3), (4, 5)):
        keep = (counts >= lo) & (counts <= hi)
        if keep.sum() >= 10:
            by_count[f"{lo}-{hi}" if hi > lo else str(lo)] = {
                "scenes": int(keep.sum()), **mode_table(s3[keep], y[keep], DEFAULT_ZETA, DEFAULT_LAM)}
    return {
        "command": "python bench/quality.py " + " ".join(sys.argv[1:]),
        "scenes": n, "seed": seed, "size": size, "model": bundle.spec.display,
        "logit_scale_exp": float(np.exp(bundle.logit_scale)),
        "single_object_top1": single_object_accuracy(bundle, text, 20, seed),
        **Aggregation().params_dict(),
        "table3": mode_table(s3, y, DEFAULT_ZETA, DEFAULT_LAM),
        "by_object_count": by_count,
        "zeta_sweep": {z: mode_map(s3, y, Aggregation(zeta=z)) for z in ZETAS},
        "lambda_sweep": {lam: mode_map(s3, y, Aggregation(lam=lam)) for lam in LAMS},
        "grid_sweep": {g: {m: mode_map(scores[g], y, Aggregation(m)) for m in ("avg", "max", "cdul")}
                       for g in GRIDS},
        "seconds": round(time.time() - t0, 1),
    }


def markdown(r: dict) -> str:
    t = r["table3"]
    lines = [
        "## Pseudo-label quality (synthetic world)",
        "",
        f"Shipped tiny CLIP `{r['model']}` (exp(logit_scale) = {r['logit_scale_exp']:.1f}) on {r['scenes']} held-out "
        f"scenes of {r['size']} px, seed {r['seed']}, 1-5 objects each; zeta = {r['zeta']}, lambda = {r['lambda']}, "
        f"3x3 grid unless stated. Zero-shot top-1 on single-object images: {100 * r['single_object_top1']:.1f}%.",
        "",
        "```",
        r["command"],
        "```",
        "",
        "| mode | mAP |",
        "|---|---|",
        *[f"| {m} | {100 * t[m]:.1f} |" for m in TABLE3_ORDER],
        "",
        f"cdul - global = {100 * (t['cdul'] - t['global']):+.1f} mAP points.",
        "",
        "By objects per scene (mAP):",
        "",
        "| objects | scenes | " + " | ".join(TABLE3_ORDER) + " |",
        "|---|---|" + "---|" * len(TABLE3_ORDER),
        *[f"| {k} | {v['scenes']} | " + " | ".join(f"{100 * v[m]:.1f}" for m in TABLE3_ORDER) + " |"
          for k, v in r["by_object_count"].items()],
        "",
        "zeta sweep (cdul): " + ", ".join(f"{z}: {100 * v:.1f}" for z, v in r["zeta_sweep"].items()),
        "",
        "lambda sweep (cdul): " + ", ".join(f"{lam}: {100 * v:.1f}" for lam, v in r["lambda_sweep"].items()),
        "",
        "| grid g | avg | max | cdul |",
        "|---|---|---|---|",
        *[f"| {g} | " + " | ".join(f"{100 * v[m]:.1f}" for m in ("avg", "max", "cdul")) + " |"
          for g, v in r["grid_sweep"].items()],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--size", type=int, default=288)
    ap.add_argument("--weights", default=None, help="tiny CLIP weights (default: the shipped file)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", default=None, help="write the BENCHMARKS.md section here ('-' for stdout)")
    args = ap.parse_args()
    r = run(args.scenes, args.seed, args.size, args.weights, args.threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    md = markdown(r)
    if args.markdown == "-" or args.markdown is None:
        print(md)
    else:
        Path(args.markdown).write_text(md)


if __name__ == "__main__":
    main()
