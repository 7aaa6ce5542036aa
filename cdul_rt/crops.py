"""The global view plus a g x g grid of snippets (DESIGN.md 1.1 steps 2-4). Pure PIL + numpy, torch-free."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, preprocess_uint8

# 1 + g^2 crops per image: memory and encoder time grow with g^2. g = 8 is 65 crops (6.5x the paper's g = 3, whose
# ablation found g = 4 already worse) and tiles of a 640x480 photo of 80x60 px upscaled ~3x; beyond it labels only get
# worse while one image's crops pass 10 MB (uint8, S = 224) or 39 MB as float32 (`--grid 100`: 1.5 GB per image).
MAX_GRID = 8


def check_grid(grid: int) -> None:
    """Raise a clear error for a grid outside 1..MAX_GRID."""
    if grid < 1:
        raise CdulError(f"--grid must be >= 1, got {grid}")
    if grid > MAX_GRID:
        raise CdulError(f"--grid {grid} is above the maximum of {MAX_GRID}: it would make {1 + grid * grid} crops per "
                        "image (memory and encoder time grow with g^2; the paper uses 3). "
                        f"Use --grid {MAX_GRID} or less.")


def grid_edges(length: int, grid: int) -> list[int]:
    """Tile borders along one axis at round(k * length / g), k = 0..g, so no pixel is dropped.

    Rounding is half-up (floor(x + 0.5)) rather than Python's banker's rounding, so the result does not depend on
    the parity of the neighbouring integer.
    """
    return [int(np.floor(k * length / grid + 0.5)) for k in range(grid + 1)]


def grid_boxes(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Row-major (left, top, right, bottom) boxes of a non-overlapping g x g grid covering the whole image."""
    check_grid(grid)
    if width < grid or height < grid:
        raise CdulError(f"image of {width}x{height} px is too small for a {grid}x{grid} grid")
    xs, ys = grid_edges(width, grid), grid_edges(height, grid)
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(grid) for i in range(grid)]


def image_crops(img: Image.Image, grid: int, cfg: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[1 + g^2, S, S, 3]``: the global view, then the tiles row by row, each preprocessed alike.

    ``out``: an array of that shape to write into (e.g. a slot of the decode pool's shared-memory ring), returned.
    """
    boxes = grid_boxes(img.width, img.height, grid)
    shape = (1 + len(boxes), cfg.size, cfg.size, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise CdulError(f"crop buffer must be uint8 {shape}, got {out.dtype} {out.shape}")
    for i, box in enumerate([None, *boxes]):  # one tile copy alive at a time
        out[i] = preprocess_uint8(img if box is None else img.crop(box), cfg)
    return out


def crops_per_image(grid: int) -> int:
    return 1 + grid * grid
