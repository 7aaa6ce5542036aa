"""Decoding and cropping in worker processes, overlapped with encoding, with bounded read-ahead.

Workers run :func:`load_crops` (PIL + numpy only; they never import torch) and return uint8 crops, so a batch in
flight costs ``k * (1+g^2) * S * S * 3`` bytes. At most ``prefetch`` images are in flight, so memory stays flat for
any folder size. Results come back in submission order.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdul_rt.crops import image_crops
from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, describe_error, open_rgb
from cdul_rt.preprocess import PreprocessConfig


@dataclass
class Decoded:
    """One image's crops (uint8 ``[1+g^2, S, S, 3]``) or the reason it could not be read."""

    path: Path
    crops: np.ndarray | None
    error: str | None = None


def load_crops(path: Path, grid: int, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
               jpeg_draft: bool = False) -> Decoded:
    """``jpeg_draft``: decode large JPEGs downscaled as long as every tile stays >= the model input size."""
    try:
        img = open_rgb(path, max_pixels, (grid, cfg.size) if jpeg_draft else None)
        return Decoded(path, image_crops(img, grid, cfg))
    except CdulError as exc:
        return Decoded(path, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is data, not a crash
        return Decoded(path, None, describe_error(exc))


def _load_many(paths: list[Path], grid: int, cfg: PreprocessConfig, max_pixels: int,
               jpeg_draft: bool = False) -> list[Decoded]:
    return [load_crops(p, grid, cfg, max_pixels, jpeg_draft) for p in paths]


def decode_stream(paths: Iterable[Path], grid: int, cfg: PreprocessConfig, workers: int = 2,
                  max_pixels: int = DEFAULT_MAX_PIXELS, chunk: int = 4, prefetch: int = 64,
                  jpeg_draft: bool = False) -> Iterator[Decoded]:
    """Yield :class:`Decoded` for each path, in order. ``workers=0`` decodes in this process."""
    if workers <= 0:
        for p in paths:
            yield load_crops(p, grid, cfg, max_pixels, jpeg_draft)
        return
    # spawn: workers start clean (no copy of a torch runtime with its threads, which can deadlock after fork)
    ctx = mp.get_context("spawn")
    pending: deque[Future] = deque()
    it = iter(paths)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        def submit() -> bool:
            batch = [p for _, p in zip(range(chunk), it)]
            if batch:
                pending.append(pool.submit(_load_many, batch, grid, cfg, max_pixels, jpeg_draft))
            return bool(batch)

        while len(pending) * chunk < prefetch and submit():
            pass
        while pending:
            results = pending.popleft().result()
            submit()
            yield from results
