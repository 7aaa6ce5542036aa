"""Single-object images, tile-like training views and multi-object scenes of the synthetic world.

Every image comes from its own generator ``item_rng(seed, index, stream)``, so any subset of a data set can be
regenerated independently and in any order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cdul_rt.errors import CdulError
from cdul_rt.synth.classes import SYNTH_CLASSES
from cdul_rt.synth.shapes import shape_mask
from cdul_rt.synth.textures import background, contrasting_luma, fill_texture, luminance

# Separate random streams, so single images, training views and scenes of one seed never share draws.
STREAM_SINGLE, STREAM_TRAIN, STREAM_SCENE = 1, 2, 3


def item_rng(seed: int, index: int, stream: int = STREAM_SCENE) -> np.random.Generator:
    """The generator of image `index` of the data set `(seed, stream)`."""
    return np.random.default_rng([seed, stream, index])


def _to_image(canvas: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def paste_object(canvas: np.ndarray, cls_index: int, cx: float, cy: float, size: int,
                 rng: np.random.Generator) -> None:
    """Draw class `cls_index` centred at (cx, cy) with bounding size `size` px into `canvas` (in place).

    The object may stick out of the canvas (it is clipped, like an object cut by the frame or a tile border).
    Its brightness is chosen against the pixels it covers so it stays visible.
    """
    h, w, _ = canvas.shape
    size = max(4, int(size))
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x0 + size), min(h, y0 + size)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    mask = shape_mask(SYNTH_CLASSES[cls_index], size, rng)[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
    region = canvas[cy0:cy1, cx0:cx1]
    weight = float(mask.sum())
    under = float((luminance(region) * mask[..., 0]).sum() / weight) if weight > 0 else float(luminance(region).mean())
    fill = fill_texture(size, size, rng, contrasting_luma(rng, under), float(size))
    fill = fill[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region *= 1.0 - mask
    region += mask * fill


def render_single(cls_index: int, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One object of class `cls_index`, fairly large (50-85% of the side) and centred with some jitter."""
    canvas, _ = background(size, size, rng)
    obj = size * rng.uniform(0.5, 0.85)
    cx, cy = size * (0.5 + rng.uniform(-0.12, 0.12, size=2))
    paste_object(canvas, cls_index, cx, cy, int(obj), rng)
    return _to_image(canvas)


def render_view(cls_index: int | None, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A training view that looks like a grid tile: one object at 40-105% of the side, off-centre and up to
    about a third cut off by the border; ``cls_index=None`` gives a background-only view."""
    canvas, _ = background(size, size, rng)
    if cls_index is not None:
        obj = size * rng.uniform(0.4, 1.05)
        margin = obj * rng.uniform(0.15, 0.5)
        lo, hi = margin, size - margin
        cx, cy = rng.uniform(lo, hi, size=2) if hi > lo else (size / 2, size / 2)
        paste_object(canvas, cls_index, cx, cy, int(obj), rng)
    return _to_image(canvas)


def _place(sizes: np.ndarray, canvas_size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Free positions (not tied to any grid) with little overlap: centres at least 0.45*(s_i + s_j) apart."""
    placed: list[tuple[float, float]] = []
    for s in sizes:
        lo, hi = 0.35 * s, canvas_size - 0.35 * s
        for _ in range(200):
            c = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            if all(np.hypot(c[0] - p[0], c[1] - p[1]) >= 0.45 * (s + sizes[j]) for j, p in enumerate(placed)):
                break
        placed.append(c)
    return placed


def render_scene(rng: np.random.Generator, size: int = 288,
                 n_objects: tuple[int, int] = (1, 5)) -> tuple[Image.Image, list[str]]:
    """A scene of n_objects[0]..n_objects[1] objects of distinct classes at free positions.

    Objects are moderately small (15-30% of the side): a 64-px global view shrinks them to 10-20 px, while a
    3x3 tile shows them at a size the tiny CLIP was trained on. Returns the image and its sorted label names.
    """
    lo, hi = n_objects
    if not 1 <= lo <= hi <= len(SYNTH_CLASSES):
        raise CdulError(f"n_objects must satisfy 1 <= min <= max <= {len(SYNTH_CLASSES)}, got {n_objects}")
    n = int(rng.integers(lo, hi + 1))
    classes = sorted(int(c) for c in rng.choice(len(SYNTH_CLASSES), size=n, replace=False))
    canvas, _ = background(size, size, rng)
    sizes = size * rng.uniform(0.15, 0.3, size=n)
    order = rng.permutation(n)  # drawing order decides who covers whom on overlaps
    centres = _place(sizes[order], size, rng)
    for k, (cx, cy) in zip(order, centres):
        paste_object(canvas, classes[k], cx, cy, int(sizes[k]), rng)
    return _to_image(canvas), [SYNTH_CLASSES[c] for c in classes]


def write_scene_folder(out_dir: str | Path, n: int, seed: int, size: int = 288,
                       n_objects: tuple[int, int] = (1, 5), ext: str = "jpg") -> Path:
    """Write `n` scenes to ``out_dir/images/scene_%05d.<ext>`` plus ground truth and vocabulary.

    ``out_dir/labels.jsonl`` has one ``{"path": "scene_00000.jpg", "labels": [...]}`` per line, with paths relative
    to ``out_dir/images`` (as ``cdul-rt label out_dir/images`` writes them); ``out_dir/classes.txt`` lists the
    vocabulary, one class per line. Returns ``out_dir``.
    """
    if ext not in ("jpg", "png"):
        raise CdulError(f"image format must be 'jpg' or 'png', got {ext!r}")
    if n < 0:
        raise CdulError(f"number of scenes must be >= 0, got {n}")
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.jsonl", "w", encoding="utf-8") as gt:
        for i in range(n):
            img, labels = render_scene(item_rng(seed, i, STREAM_SCENE), size=size, n_objects=n_objects)
            name = f"scene_{i:05d}.{ext}"
            img.save(images / name, quality=92) if ext == "jpg" else img.save(images / name)
            gt.write(json.dumps({"path": name, "labels": labels}) + "\n")
    (out / "classes.txt").write_text("\n".join(SYNTH_CLASSES) + "\n", encoding="utf-8")
    return out


def read_labels(labels_path: str | Path) -> dict[str, list[str]]:
    """Ground truth written by `write_scene_folder`: path (relative to images/) -> label names."""
    rows = {}
    with open(labels_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["path"]] = row["labels"]
    return rows
