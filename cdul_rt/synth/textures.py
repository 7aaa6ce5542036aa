"""Colours, object fills and backgrounds. Colours are drawn independently of the class, so no single pixel
colour identifies an object; the object's brightness is kept apart from its background's so it stays visible.

All images are float32 arrays of shape (H, W, 3) in [0, 1].
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _LUMA


def random_colour(rng: np.random.Generator, luma: float) -> np.ndarray:
    """A random hue and saturation, scaled towards the requested luminance (clipped into [0, 1])."""
    rgb = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    if rng.uniform() < 0.5:  # more saturated colours half of the time
        rgb[rng.integers(3)] *= rng.uniform(0.0, 0.3)
    cur = float(luminance(rgb))
    if cur < 1e-3:
        rgb[:] = luma
    elif luma <= cur:
        rgb *= luma / cur
    else:  # brighten towards white while keeping the hue
        t = (luma - cur) / max(1e-3, 1.0 - cur)
        rgb = rgb + t * (1.0 - rgb)
    return np.clip(rgb, 0.0, 1.0)


def _coords(h: int, w: int, angle: float) -> np.ndarray:
    """Distance along direction `angle` of each pixel, in pixels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx * np.cos(angle) + yy * np.sin(angle)


def _two_colour(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * (1.0 - t[..., None]) + b * t[..., None]


def fill_texture(h: int, w: int, rng: np.random.Generator, luma: float, scale: float) -> np.ndarray:
    """An object fill: solid, stripes, dots or gradient. `scale` is the object size in pixels (texture periods
    follow it, like a pattern printed on the object)."""
    a = random_colour(rng, luma)
    b = random_colour(rng, float(np.clip(luma + rng.uniform(-0.18, 0.18), 0.0, 1.0)))
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(a, (h, w, 3)).copy()
    if kind == 1:
        period = scale / rng.uniform(2.5, 6.0)
        t = (np.sin(_coords(h, w, rng.uniform(0, np.pi)) * 2 * np.pi / period) > 0).astype(np.float32)
        return _two_colour(t, a, b)
    if kind == 2:
        period = scale / rng.uniform(3.0, 6.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dy = (yy % period) - period / 2
        dx = (xx % period) - period / 2
        t = (dx * dx + dy * dy < (period * 0.28) ** 2).astype(np.float32)
        return _two_colour(t, a, b)
    t = _coords(h, w, rng.uniform(0, 2 * np.pi))
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    return _two_colour(t, a, b)


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid, bicubically upsampled."""
    grid = rng.uniform(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img), 0.0, 1.0)


def _clutter(img: np.ndarray, rng: np.random.Generator, luma: float) -> None:
    """Thin lines and small blobs that look like no class (in place)."""
    h, w, _ = img.shape
    layer = Image.new("RGB", (w, h), 0)
    mask = Image.new("L", (w, h), 0)
    d_layer, d_mask = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    s = min(h, w)
    for _ in range(int(rng.integers(6, 20))):
        col = tuple(int(255 * c) for c in random_colour(rng, float(np.clip(luma + rng.uniform(-0.2, 0.2), 0, 1))))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        if rng.uniform() < 0.6:
            x1, y1 = x0 + rng.normal(0, s * 0.3), y0 + rng.normal(0, s * 0.3)
            width = max(1, int(s * rng.uniform(0.005, 0.015)))
            d_layer.line([(x0, y0), (x1, y1)], fill=col, width=width)
            d_mask.line([(x0, y0), (x1, y1)], fill=255, width=width)
        else:
            r = s * rng.uniform(0.01, 0.035)
            box = [x0 - r, y0 - r * rng.uniform(0.4, 1.0), x0 + r, y0 + r * rng.uniform(0.4, 1.0)]
            d_layer.ellipse(box, fill=col)
            d_mask.ellipse(box, fill=255)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0 * rng.uniform(0.4, 0.8)
    img *= 1.0 - alpha
    img += alpha * np.asarray(layer, dtype=np.float32) / 255.0


def background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A textured background (noise, gradient, stripes or clutter) and its mean luminance."""
    luma = float(rng.uniform(0.1, 0.9))
    a = random_colour(rng, luma)
    b = random_colour(rng, float(np.clip(luma + rng.uniform(-0.15, 0.15), 0.0, 1.0)))
    kind = rng.integers(4)
    s = min(h, w)
    if kind == 0:
        img = _two_colour(_smooth_noise(h, w, rng, int(rng.integers(3, 12))), a, b)
    elif kind == 1:
        t = _coords(h, w, rng.uniform(0, 2 * np.pi))
        img = _two_colour((t - t.min()) / max(1e-6, float(t.max() - t.min())), a, b)
    elif kind == 2:
        period = s * rng.uniform(0.04, 0.2)
        t = 0.5 + 0.5 * np.sin(_coords(h, w, rng.uniform(0, np.pi)) * 2 * np.pi / period)
        img = _two_colour(t.astype(np.float32), a, b)
    else:
        img = _two_colour(_smooth_noise(h, w, rng, 4), a, b)
        _clutter(img, rng, luma)
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32), luma


def contrasting_luma(rng: np.random.Generator, background_luma: float) -> float:
    """An object brightness at least 0.3 away from the background's (so shapes never vanish into it)."""
    lo, hi = background_luma - 0.3, background_luma + 0.3
    options = []
    if lo > 0.02:
        options.append((0.02, lo))
    if hi < 0.98:
        options.append((hi, 0.98))
    a, b = options[int(rng.integers(len(options)))]
    return float(rng.uniform(a, b))
