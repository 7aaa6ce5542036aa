"""A folder of photo-like JPEGs to benchmark on: smooth backgrounds, a few objects, sensor noise, quality 90.

Random-noise images would make JPEG decoding several times slower than on photos (nothing compresses), so the
end-to-end numbers would mislead; these decode like ordinary camera pictures of the same size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cdul_rt.errors import CdulError


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """One RGB picture: a blurred colour field, 3-6 filled shapes, mild per-pixel noise."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1 = x0 + int(rng.integers(8, max(9, width // 2)))
        y1 = y0 + int(rng.integers(8, max(9, height // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    a = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def write_jpeg_folder(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0,
                      quality: int = 90) -> list[Path]:
    """``n`` JPEGs of ``size`` (width, height) under ``folder``; existing files of the same name are kept."""
    width, height = size
    if n < 1 or width < 16 or height < 16:
        raise CdulError(f"need n >= 1 images of at least 16x16 px, got n={n}, size={width}x{height}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"bench_{i:06d}.jpg"
        img = photo_like(width, height, rng)
        if not path.is_file():
            img.save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480)."""
    w, sep, h = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(w), int(h)
    except ValueError:
        raise CdulError(f"image size must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
