"""Parity of the device crop path (``--decode gpu``'s torch code, run here on CPU tensors) with the CPU path.

Crops: the same decoded pixels (photo-like JPEGs, several sizes) through the CPU path (PIL crop/resize/center-crop)
and through :mod:`cdul_rt.devicecrops` -> mean and max |difference| in grey levels, and the share of values that
differ. Also the single 2-D ``F.interpolate`` call (no intermediate uint8 rounding) for comparison.
Scores: S_final of the same images through the same runner from both crop sets -> max |diff|, top-1 agreement.

    PYTHONPATH=. python bench/device_parity.py [--images 48] [--models cdul-tiny ViT-B-32] [--json out.json]

On a CUDA machine ``--device cuda`` decodes with nvJPEG and crops on the GPU (the figures then include nvJPEG's
decoding differences).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = ((640, 480), (480, 640), (1024, 768), (800, 533), (333, 250))


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    from cdul_rt.bench.images import photo_like

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        photo_like(*SIZES[i % len(SIZES)], rng).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def crop_sets(data: list[bytes], grid: int, pp, device: str, single_pass: bool = False):
    """(CPU-path uint8 crops [n, 1+g^2, S, S, 3], device uint8 crops, same layout) from the same JPEG bytes."""
    import torch
    from PIL import Image

    from cdul_rt import devicecrops
    from cdul_rt.crops import image_crops
    from cdul_rt.devicedecode import decode_jpegs

    ref = np.stack([image_crops(Image.open(io.BytesIO(d)).convert("RGB"), grid, pp) for d in data])
    images = decode_jpegs(data, device)
    plans = [devicecrops.view_plan(int(t.shape[2]), int(t.shape[1]), grid, pp) for t in images]
    real = devicecrops.resize_like_pil
    if single_pass:  # the one-call variant: what a straightforward port does
        def one_call(x, size, mode="bicubic"):
            w, h = size
            y = torch.nn.functional.interpolate(x.float(), size=(h, w), mode=mode, antialias=True,
                                                align_corners=False)
            return y.round_().clamp_(0, 255).to(torch.uint8)
        devicecrops.resize_like_pil = one_call
    try:
        got = devicecrops.crops_uint8(images, plans, pp)
    finally:
        devicecrops.resize_like_pil = real
    got = got.cpu().permute(0, 2, 3, 1).numpy().reshape(ref.shape)
    return ref, got


def crop_row(name: str, ref: np.ndarray, got: np.ndarray) -> dict:
    d = np.abs(ref.astype(np.int16) - got.astype(np.int16))
    return {"variant": name, "mean_abs": float(d.mean()), "max_abs": int(d.max()),
            "share_differing": float((d > 0).mean()), "values": int(d.size)}


def score_row(model: str, data: list[bytes], grid: int, device: str) -> dict:
    import torch

    from cdul_rt.devicecrops import normalize
    from cdul_rt.pipeline import LabelConfig, open_session
    from cdul_rt.preprocess import normalize_batch
    from cdul_rt.vocab import load_vocabulary

    cfg = LabelConfig(input=Path("."), out=Path("x.jsonl"), model=model, pretrained="none" if model != "cdul-tiny"
                      else None, classes="coco", device=device, grid=grid, runtime="torch")  # infer_tensor
    session = open_session(cfg, load_vocabulary("coco"))
    pp = session.preprocess
    ref, got = crop_sets(data, grid, pp, device)
    n = len(data)
    t = time.perf_counter()
    with session.runner as runner:
        a = runner.infer({"crops": normalize_batch(ref.reshape(-1, pp.size, pp.size, 3), pp),
                          "text_embeddings": session.text_embeddings})["S_final"]
        dev = normalize(torch.from_numpy(got.reshape(-1, pp.size, pp.size, 3)).permute(0, 3, 1, 2).to(device), pp)
        b = runner.infer_tensor(dev, session.text_embeddings)["S_final"]
    return {"model": session.model, "images": n, "crop_size": pp.size, "S_final_max_abs": float(np.abs(a - b).max()),
            "S_final_spread": float(a.max() - a.min()), "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "seconds": round(time.perf_counter() - t, 1), **crop_row("", ref, got)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48, help="photo-like JPEGs for the crop figures")
    ap.add_argument("--score-images", type=int, default=16, help="of them, through each model for the scores")
    ap.add_argument("--models", nargs="+", default=["cdul-tiny", "ViT-B-32"])
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from cdul_rt.preprocess import PreprocessConfig

    data = jpegs(args.images)
    crops = []
    for s in (224, 64):
        pp = PreprocessConfig(size=s)
        for single in (False, True):
            ref, got = crop_sets(data, args.grid, pp, args.device, single_pass=single)
            crops.append({"size": s, **crop_row("one 2-D interpolate call" if single else "two passes (shipped)",
                                                 ref, got)})
    scores = [score_row(m, data[:args.score_images], args.grid, args.device) for m in args.models]
    print(f"{args.images} photo-like JPEGs ({', '.join(f'{w}x{h}' for w, h in SIZES)}), grid {args.grid}, "
          f"device {args.device}\n")
    print("| crop size | resize | mean abs (grey levels) | max abs | values differing |\n|---|---|---|---|---|")
    for r in crops:
        print(f"| {r['size']} | {r['variant']} | {r['mean_abs']:.4f} | {r['max_abs']} | "
              f"{100 * r['share_differing']:.3f}% |")
    print("\n| model | images | crops: mean / max abs | S_final max abs diff (spread) | top-1 agreement |\n"
          "|---|---|---|---|---|")
    for r in scores:
        print(f"| {r['model']} ({r['crop_size']} px) | {r['images']} | {r['mean_abs']:.4f} / {r['max_abs']} | "
              f"{r['S_final_max_abs']:.2e} ({r['S_final_spread']:.2f}) | {r['top1_agreement']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"crops": crops, "scores": scores, "device": args.device}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
