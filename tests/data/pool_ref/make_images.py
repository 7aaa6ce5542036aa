"""Reference images (PNG: lossless, decoded identically by any Pillow) for the uint8-to-runner parity test."""
from pathlib import Path
import numpy as np
from PIL import Image
from cdul_rt.synth.scenes import item_rng, render_scene, STREAM_SCENE
out = Path("tests/data/pool_ref/images")
sizes = [(160, 120), (96, 96), (70, 150), (200, 90), (130, 110), (64, 200)]
for i, (w, h) in enumerate(sizes):
    img, _ = render_scene(item_rng(11, i, STREAM_SCENE), size=160)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    if i == 3:
        img = img.convert("L")
    if i == 4:
        img = img.convert("RGBA"); a = np.asarray(img).copy(); a[:20, :, 3] = 90; img = Image.fromarray(a)
    img.save(out / f"ref_{i}.png", optimize=True)
