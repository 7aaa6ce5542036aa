"""Training and inference inputs: the whole image, resized (not cropped) to a square, ImageNet-normalised.

The same ``preprocess`` serves ``train``, ``predict`` and the exported classifier's manifest, so the three see
identical pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cdul_rt.errors import CdulError

if TYPE_CHECKING:
    import torch
    from PIL import Image


def _open_rgb(path: Path) -> "Image.Image":
    from cdul_rt.imageio import open_rgb

    return open_rgb(path)


def preprocess(image: "Image.Image", image_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB PIL image -> float32 [3, S, S]: bilinear resize of the whole image (antialiased), /255, mean/std."""
    return normalize_pixels(resize_pixels(image, image_size), mean, std)


def resize_pixels(image: "Image.Image", image_size: int) -> np.ndarray:
    """The first half of :func:`preprocess`: uint8 ``[S, S, 3]`` (what ``predict``'s decode workers make)."""
    from PIL import Image

    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR))


def normalize_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The second half of :func:`preprocess`: uint8 ``[S, S, 3]`` -> float32 ``[3, S, S]``, /255, mean/std."""
    array = np.asarray(pixels, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


# Training sets whose preprocessed pixels fit in this many bytes (train + held-out) are decoded once and kept in
# memory: every epoch then skips JPEG decoding and resizing (a third of a small network's CPU time per epoch).
CACHE_BYTES = 512 * 1024 * 1024


def fits_cache(n_images: int, image_size: int) -> bool:
    return n_images * 3 * image_size * image_size * 4 <= CACHE_BYTES


class ImageFolderDataset:
    """Map-style dataset of (image tensor, row index) over a list of files; decoding happens in DataLoader workers.

    ``cache=True`` keeps each preprocessed image after its first decode (per process: with DataLoader workers each
    worker keeps its own, so use it with ``workers=0``); the tensors are the same either way.
    """

    def __init__(self, files: Sequence[Path], image_size: int, mean: Sequence[float], std: Sequence[float],
                 cache: bool = False):
        self.files = list(files)
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple["torch.Tensor", int]:
        import torch

        if self.cache is not None and index in self.cache:
            return torch.from_numpy(self.cache[index]), index
        array = self._load(index)
        if self.cache is not None:
            self.cache[index] = array
        return torch.from_numpy(array), index

    def _load(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            image = _open_rgb(path)
        except CdulError:
            raise
        except Exception as exc:  # a corrupt file mid-run: name it instead of a worker traceback
            raise CdulError(f"cannot decode {path}: {exc}; remove or replace it and resume with --resume") from exc
        return preprocess(image, self.image_size, self.mean, self.std)


def make_loader(dataset: ImageFolderDataset, order: Sequence[int], batch_size: int, workers: int):
    """A DataLoader that visits ``order`` exactly (shuffling is decided by the caller's seeded generator)."""
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(order),
        num_workers=workers,
        persistent_workers=False,
    )


def resolve_image_files(root: Path, rel_paths: Sequence[str]) -> list[Path]:
    """Join label-file paths onto the image folder; fail listing the first missing ones."""
    files = [root / p for p in rel_paths]
    missing = [str(p) for p, f in zip(rel_paths, files) if not f.is_file()]
    if missing:
        shown = ", ".join(missing[:5])
        raise CdulError(
            f"{len(missing)} of {len(files)} images in the label file are not under {root} (e.g. {shown}); "
            "pass the folder that was labeled (label-file paths are relative to it)"
        )
    return files
