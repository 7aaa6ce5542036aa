"""Repeated-run statistics: median and relative spread of throughput samples (pure, torch-free)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cdul_rt.errors import CdulError


@dataclass(frozen=True)
class Throughput:
    """Images per second over repeated runs; ``spread`` is ``(max - min) / median`` (0.05 = 5 %)."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples or any(s <= 0 for s in self.samples):
            raise CdulError(f"throughput samples must be positive and non-empty, got {self.samples}")

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def spread(self) -> float:
        return (max(self.samples) - min(self.samples)) / self.median

    @property
    def ms_per_image(self) -> float:
        return 1000.0 / self.median


def throughput(images: int, seconds: list[float]) -> Throughput:
    """``images`` processed in each of the timed runs -> images/s samples."""
    if images <= 0:
        raise CdulError(f"a timed run must process at least one image, got {images}")
    return Throughput(tuple(images / s for s in seconds))


def per_item(seconds: list[float]) -> Throughput:
    """One image per timed interval (the naive loop times each image on its own)."""
    return Throughput(tuple(1.0 / s for s in seconds))
