#!/usr/bin/env python
"""The paper's training ablations in miniature, on the synthetic world, over several seeds.

    python bench/training.py --seeds 0 1 2 --json bench/results/training.json --markdown -

Per seed: fresh training and held-out scenes (scene seeds 2026 + 2*seed and + 1), both pseudo-labeled by the shipped
tiny CLIP with the cdul aggregator, then `cdul-rt train` with the demo's recipe (`cdul_rt.train.synth_world.RECIPE`:
tiny-resnet from its synthetic pre-training, 128 px, Adam 1e-4, warm-up 3) in each variant:

    no-alignment  classifier on the fixed soft initial labels (--no-alignment)
    hard          hard initial labels [S_final >= 0.5] (--hard-labels; psi is 0 at 0 and 1, so they stay fixed)
    no-psi        alignment without the Gaussian psi (--no-psi: psi == 1)
    cdul          alignment with psi (the paper's full method)

Reported: the initial pseudo labels' mAP (training scenes, and the held-out scenes labeled the same way), each
variant's classifier mAP on the held-out scenes and its refined labels' mAP on the training scenes; mean and sample
standard deviation over seeds, and the paired per-seed differences the paper's claims are about.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

VARIANTS = {"no-alignment": {"alignment": False}, "hard": {"hard_labels": True}, "no-psi": {"use_psi": False},
            "cdul": {}}  # TrainConfig changes of each variant
SCENE_SEED = 2026


def run_seed(root: Path, seed: int, args: argparse.Namespace) -> dict:
    from cdul_rt.cli.train import config_changes
    from cdul_rt.train.synth_world import World, make_world, recipe_config, run_train, world_inputs

    started = time.perf_counter()
    folder = root / f"seed{seed}"
    world = World(folder / "train", folder / "val", folder / "pseudo_labels.jsonl",
                  folder / "val_pseudo_labels.jsonl")
    if not _world_done(world, args):  # a re-run (or another process on other seeds) reuses finished work
        world = make_world(folder, args.scenes, args.val_scenes, SCENE_SEED + 2 * seed)
    out = {"seed": seed, "label_seconds": round(time.perf_counter() - started, 1), "variants": {}}
    for name in args.variants:
        run_dir = folder / name
        resume = False
        if (run_dir / "model.pt").is_file():
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
            if rows[-1].get("epoch") == args.epochs:
                out["variants"][name] = _numbers(rows)
                continue
            if rows[-1].get("epoch", 0) > args.epochs:
                raise SystemExit(f"{run_dir} holds a longer run; use another --work")
            # a shorter run is extended: the schedule of epoch k does not depend on the total (constant lr, per-epoch
            # generators), so the extended run equals a run started with the larger --epochs; the resume refuses
            # one started with other settings
            resume = True
        changes = {"threads": args.threads, "seed": seed, "eval_every": args.eval_every or args.epochs,
                   **VARIANTS[name], **config_changes(args.extra)}
        config = recipe_config(args.epochs, **changes)
        log = io.StringIO()  # per-epoch log lines and the run's summary; metrics.jsonl keeps them
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
            rows = run_train(config, world_inputs(world, run_dir), resume=resume)
        out["variants"][name] = _numbers(rows)
        print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in out["variants"][name].items()
                                                  if isinstance(v, float)),
              file=sys.stderr, flush=True)
    return out


def _world_done(world, args: argparse.Namespace) -> bool:
    def rows(path: Path) -> int:
        return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else -1

    return rows(world.labels) == args.scenes and rows(world.val_labels) == args.val_scenes


def _numbers(rows: list[dict]) -> dict:
    """What the tables need from one run's metrics.jsonl (seconds: the run's epochs, evaluation included)."""
    first, last = rows[0], rows[-1]
    seconds = round(sum(r.get("seconds", 0.0) for r in rows), 1)
    return {"labels_initial": first["map_pseudo"], "labels_final": last["map_pseudo"],
            "pseudo_val": first["map_pseudo_val"], "pred_val": last["map_pred_val"],
            "pred_train": last["map_pred_train"], "seconds": seconds,
            "pred_val_by_epoch": {r["epoch"]: r["map_pred_val"] for r in rows if "map_pred_val" in r}}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(per_seed: list[dict]) -> dict:
    """Mean and spread of every number, and the paired differences behind the paper's claims (in mAP points)."""
    names = list(per_seed[0]["variants"])
    def col(name: str, key: str) -> list[float]:
        return [100 * s["variants"][name][key] for s in per_seed]

    ref = names[0]
    table = {"initial pseudo labels": {"labels": mean_sd(col(ref, "labels_initial")),
                                       "held_out": mean_sd(col(ref, "pseudo_val"))}}
    for name in names:
        table[name] = {"labels": mean_sd(col(name, "labels_final")), "held_out": mean_sd(col(name, "pred_val")),
                       "train": mean_sd(col(name, "pred_train")),
                       "labels_start": mean_sd(col(name, "labels_initial"))}
    by_epoch = {}  # held-out classifier mAP at every evaluated epoch (--eval-every), for the curve's shape
    for name in names:
        epochs = set.intersection(*(set(s["variants"][name].get("pred_val_by_epoch", {})) for s in per_seed))
        if len(epochs) > 1:
            by_epoch[name] = {e: mean_sd([100 * s["variants"][name]["pred_val_by_epoch"][e] for s in per_seed])
                              for e in sorted(epochs, key=int)}
    diffs = {}
    if "cdul" in names:
        def diff(a: list[float], b: list[float]) -> dict:
            d = [x - y for x, y in zip(a, b)]
            m, sd = mean_sd(d)
            return {"mean": m, "sd": sd, "per_seed": d}

        diffs["classifier (cdul) - initial pseudo labels, held-out"] = diff(col("cdul", "pred_val"),
                                                                            col("cdul", "pseudo_val"))
        for other in names:
            if other != "cdul":
                diffs[f"classifier cdul - {other}, held-out"] = diff(col("cdul", "pred_val"), col(other, "pred_val"))
        diffs["refined labels (cdul) - initial labels, training scenes"] = diff(col("cdul", "labels_final"),
                                                                                col("cdul", "labels_initial"))
        if "no-psi" in names:
            diffs["refined labels cdul - no-psi, training scenes"] = diff(col("cdul", "labels_final"),
                                                                          col("no-psi", "labels_final"))
    return {"table": table, "differences": diffs, "held_out_by_epoch": by_epoch}


def markdown(result: dict) -> str:
    a = result["args"]
    t, d = result["summary"]["table"], result["summary"]["differences"]
    def ms(pair) -> str:
        return f"{pair[0]:.1f} ± {pair[1]:.1f}"

    lines = [
        f"{len(a['seeds'])} seeds ({', '.join(map(str, a['seeds']))}); per seed {a['scenes']} training + "
        f"{a['val_scenes']} held-out scenes, {a['epochs']} epochs; mAP in %, mean ± sample standard deviation over "
        f"seeds; {_run_minutes(result):.0f} min of training and evaluation in all (the runs' own epoch times).",
        "",
        "```",
        result["command"],
        "```",
        "",
        "| | pseudo labels, training scenes (start -> end) | classifier, held-out scenes | classifier, training "
        "scenes |",
        "|---|---|---|---|",
        f"| initial pseudo labels (tiny CLIP, cdul) | {ms(t['initial pseudo labels']['labels'])} | "
        f"{ms(t['initial pseudo labels']['held_out'])} (the labels themselves) | |",
    ]
    for name in (n for n in t if n != "initial pseudo labels"):
        row = t[name]
        lines.append(f"| {name} | {ms(row['labels_start'])} -> {ms(row['labels'])} | {ms(row['held_out'])} | "
                     f"{ms(row['train'])} |")
    lines += ["", "Paired differences (same seed, same scenes), mAP points:", "",
              "| difference | mean ± sd | per seed |", "|---|---|---|"]
    for key, v in d.items():
        lines.append(f"| {key} | {v['mean']:+.1f} ± {v['sd']:.1f} | "
                     + ", ".join(f"{x:+.1f}" for x in v["per_seed"]) + " |")
    by_epoch = result["summary"].get("held_out_by_epoch", {})
    if by_epoch:
        epochs = list(next(iter(by_epoch.values())))
        lines += ["", "Classifier on the held-out scenes by epoch (mAP %, mean ± sd over seeds):", "",
                  "| | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
        for name, row in by_epoch.items():
            lines.append(f"| {name} | " + " | ".join(ms(row[e]) if e in row else "" for e in epochs) + " |")
    return "\n".join(lines) + "\n"


def _run_minutes(result: dict) -> float:
    return sum(v["seconds"] for s in result["per_seed"] for v in s["variants"].values()) / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scenes", type=int, default=240)
    ap.add_argument("--val-scenes", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="score the classifier every N epochs too (default: only after the last)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: steadiest on a shared CPU)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-training"), help="scenes and run folders")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more `cdul-rt train` options for every run (last; e.g. --extra --eta 0.2)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", default=None, help="write the Markdown table here ('-' for stdout)")
    args = ap.parse_args()
    started = time.perf_counter()
    per_seed = [run_seed(args.work, s, args) for s in args.seeds]
    result = {"command": "python bench/training.py " + " ".join(sys.argv[1:]),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "per_seed": per_seed, "summary": summarize(per_seed),
              "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    if args.markdown in (None, "-"):
        print(md)
    else:
        Path(args.markdown).write_text(md)


if __name__ == "__main__":
    main()
