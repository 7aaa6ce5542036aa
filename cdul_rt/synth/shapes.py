"""Binary masks of the shape classes, drawn with small random variations of their proportions.

Each shape is described in unit coordinates (it fits inside the unit disk, so any rotation keeps it inside the
canvas), drawn supersampled with PIL and rotated by a random angle; the caller downsamples to the target size,
which antialiases the edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from cdul_rt.synth.classes import SYNTH_CLASSES

Point = tuple[float, float]
# A shape is a list of (polygon, fill) pairs in unit coordinates; fill 255 adds area, fill 0 cuts a hole.
# Circles are encoded as polygons with many vertices, which keeps one drawing path for all shapes.
Strokes = list[tuple[list[Point], int]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 64) -> list[Point]:
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _circle(rng: np.random.Generator) -> Strokes:
    aspect = rng.uniform(0.88, 1.0)
    return [(_ellipse(0, 0, 0.95, 0.95 * aspect), 255)]


def _square(rng: np.random.Generator) -> Strokes:
    a = 0.68
    b = a * rng.uniform(0.9, 1.0)
    return [([(-a, -b), (a, -b), (a, b), (-a, b)], 255)]


def _triangle(rng: np.random.Generator) -> Strokes:
    pts = []
    for k in range(3):
        ang = math.radians(-90 + 120 * k + rng.uniform(-6, 6))
        pts.append((0.97 * math.cos(ang), 0.1 + 0.97 * math.sin(ang) * 0.95))
    return [(pts, 255)]


def _star(rng: np.random.Generator) -> Strokes:
    inner = rng.uniform(0.38, 0.48)
    pts = []
    for k in range(10):
        r = 0.97 if k % 2 == 0 else inner
        ang = math.radians(-90 + 36 * k)
        pts.append((r * math.cos(ang), r * math.sin(ang)))
    return [(pts, 255)]


def _ring(rng: np.random.Generator) -> Strokes:
    inner = rng.uniform(0.5, 0.62)
    return [(_ellipse(0, 0, 0.95, 0.95), 255), (_ellipse(0, 0, inner, inner), 0)]


def _cross(rng: np.random.Generator) -> Strokes:
    w = rng.uniform(0.2, 0.28)
    L = 0.95
    pts = [(-w, -L), (w, -L), (w, -w), (L, -w), (L, w), (w, w), (w, L), (-w, L), (-w, w), (-L, w), (-L, -w), (-w, -w)]
    return [(pts, 255)]


def _heart(rng: np.random.Generator) -> Strokes:
    pts = []
    for k in range(72):
        t = 2 * math.pi * k / 72
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.5, -(y + 2.5) / 17.5))
    return [(pts, 255)]


def _crescent(rng: np.random.Generator) -> Strokes:
    shift = rng.uniform(0.38, 0.5)
    cut = rng.uniform(0.78, 0.86)
    return [(_ellipse(0, 0, 0.95, 0.95), 255), (_ellipse(shift, -0.05, cut, cut), 0)]


def _arrow(rng: np.random.Generator) -> Strokes:
    sw = rng.uniform(0.13, 0.19)
    hw = rng.uniform(0.5, 0.6)
    neck = rng.uniform(0.05, 0.25)
    pts = [(-0.95, -sw), (neck, -sw), (neck, -hw), (0.97, 0.0), (neck, hw), (neck, sw), (-0.95, sw)]
    return [(pts, 255)]


def _lightning_bolt(rng: np.random.Generator) -> Strokes:
    j = rng.uniform(-0.05, 0.05)
    pts = [(0.12, -0.97), (-0.5, 0.12 + j), (-0.04, 0.12 + j), (-0.22, 0.97), (0.52, -0.22 + j), (0.06, -0.22 + j),
           (0.38, -0.97)]
    return [(pts, 255)]


def _diamond(rng: np.random.Generator) -> Strokes:
    w = rng.uniform(0.5, 0.6)
    return [([(0.0, -0.97), (w, 0.0), (0.0, 0.97), (-w, 0.0)], 255)]


def _hourglass(rng: np.random.Generator) -> Strokes:
    w = rng.uniform(0.55, 0.65)
    neck = rng.uniform(0.06, 0.12)
    h = 0.78
    return [([(-w, -h), (w, -h), (neck, 0.0), (w, h), (-w, h), (-neck, 0.0)], 255)]


_SHAPES: dict[str, Callable[[np.random.Generator], Strokes]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
    "heart": _heart,
    "crescent": _crescent,
    "arrow": _arrow,
    "lightning bolt": _lightning_bolt,
    "diamond": _diamond,
    "hourglass": _hourglass,
}
assert tuple(_SHAPES) == SYNTH_CLASSES, "every class needs a drawing and vice versa"

_SUPERSAMPLE = 3


def shape_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float mask in [0, 1] of shape (size, size) with shape `name` at a random rotation, antialiased."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    angle = rng.uniform(0.0, 2 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    half = big / 2.0
    for poly, fill in _SHAPES[name](rng):
        pts = [(half + half * (x * cos - y * sin), half + half * (x * sin + y * cos)) for x, y in poly]
        draw.polygon(pts, fill=fill)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0
