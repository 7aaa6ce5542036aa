#!/usr/bin/env python
"""Retrain the shipped tiny CLIP (cdul_rt/assets/tiny_clip/) from scratch; see cdul_rt/synth/train_clip.py.

    python scripts/train_tiny_clip.py --seed 0            # writes cdul-tiny.pth and cdul-tiny.train.json
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from cdul_rt.synth import TINY_CLIP_WEIGHTS
from cdul_rt.synth.train_clip import TrainConfig, save, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        is_bool = f.type in (bool, "bool")
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if is_bool else type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=getattr(defaults, f.name))
    parser.add_argument("--eval-every", type=int, default=0,
                        help="log held-out accuracy and save the weights every N steps")
    parser.add_argument("--out", type=Path, default=TINY_CLIP_WEIGHTS, help="weights file (.pth)")
    args = vars(parser.parse_args())
    out = args.pop("out")
    eval_every = args.pop("eval_every")
    cfg = replace(defaults, **args)
    model, _, _, record = train(cfg, checkpoint_every=eval_every, on_checkpoint=lambda m, rec: save(m, rec, out))
    save(model, record, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.train.json').name}")


if __name__ == "__main__":
    main()
