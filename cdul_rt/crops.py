"""The global view plus a g x g grid of snippets (DESIGN.md 1.1 steps 2-4). Pure PIL + numpy, torch-free."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, preprocess_uint8


def grid_edges(length: int, grid: int) -> list[int]:
    """Tile borders along one axis at round(k * length / g), k = 0..g, so no pixel is dropped.

    Rounding is half-up (floor(x + 0.5)) rather than Python's banker's rounding, so the result does not depend on
    the parity of the neighbouring integer.
    """
    return [int(np.floor(k * length / grid + 0.5)) for k in range(grid + 1)]


def grid_boxes(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Row-major (left, top, right, bottom) boxes of a non-overlapping g x g grid covering the whole image."""
    if grid < 1:
        raise CdulError(f"--grid must be >= 1, got {grid}")
    if width < grid or height < grid:
        raise CdulError(f"image of {width}x{height} px is too small for a {grid}x{grid} grid")
    xs, ys = grid_edges(width, grid), grid_edges(height, grid)
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(grid) for i in range(grid)]


def image_crops(img: Image.Image, grid: int, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 ``[1 + g^2, S, S, 3]``: the global view, then the tiles row by row, each preprocessed alike."""
    views = [img] + [img.crop(box) for box in grid_boxes(img.width, img.height, grid)]
    return np.stack([preprocess_uint8(v, cfg) for v in views])


def crops_per_image(grid: int) -> int:
    return 1 + grid * grid
