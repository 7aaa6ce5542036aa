"""uint8 crops on the host -> normalised float32 NCHW on the runner's device, in chunks that overlap on CUDA.

The CPU-decode path hands the runner uint8 ``[N, S, S, 3]`` crops (1 byte a value, 4x less to copy than float32);
normalisation runs where the encoder runs. On CUDA the rows go through a page-locked (pinned) staging buffer and are
uploaded with ``non_blocking`` copies on a copy stream, chunk by chunk: while the encoder runs on chunk j, the host
fills and uploads chunk j+1 (kernel launches return at once). On the CPU the chunks are normalised by
:func:`cdul_rt.preprocess.normalize_batch` (numpy, single-threaded: torch's small multi-threaded ops were measured
slower there while decode workers share the cores) and handed to torch without a copy.

Bit-identical to :func:`cdul_rt.preprocess.normalize_batch` on the device too: the same float32 operations in the
same order (x / 255, - mean, / std), with tensor divisors, never a Python scalar (CUDA turns ``x / scalar`` into
``x * (1 / scalar)``, which can differ in the last bit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from cdul_rt.preprocess import PreprocessConfig, normalize_batch

MAX_CHUNKS = 4  # uploads in flight per call on CUDA
MIN_CHUNK_ITEMS = 16  # images per chunk at least, so that splitting never starves the encoder


def chunk_rows(n_rows: int, rows_per_item: int, overlap: bool) -> list[tuple[int, int]]:
    """[(start, stop)) row ranges of whole items covering ``n_rows``: one range, or up to :data:`MAX_CHUNKS` of at
    least :data:`MIN_CHUNK_ITEMS` items when ``overlap`` (copies overlapping compute are worth it)."""
    items = n_rows // rows_per_item
    n_chunks = max(1, min(MAX_CHUNKS, items // MIN_CHUNK_ITEMS)) if overlap else 1
    per = -(-items // n_chunks) * rows_per_item
    return [(a, min(a + per, n_rows)) for a in range(0, n_rows, per)] if n_rows else []


def as_parts(crops) -> list[np.ndarray]:
    return [crops] if isinstance(crops, np.ndarray) else list(crops)


def _pieces(parts: Sequence[np.ndarray], start: int, stop: int) -> Iterator[np.ndarray]:
    """The rows [start, stop) of the concatenation of ``parts``, as slices of the parts (no copy)."""
    offset = 0
    for p in parts:
        a, b = max(start, offset), min(stop, offset + p.shape[0])
        if a < b:
            yield p[a - offset:b - offset]
        offset += p.shape[0]


class DeviceFeeder:
    """Normalises uint8 NHWC host crops on ``device``; on CUDA through a pinned buffer and a copy stream."""

    def __init__(self, device: str, preprocess: PreprocessConfig, overlap: bool | None = None) -> None:
        import torch

        self.device = torch.device(device)
        self.preprocess = preprocess
        self.cuda = self.device.type == "cuda"
        self.overlap = self.cuda if overlap is None else overlap
        f32 = dict(dtype=torch.float32, device=self.device)
        self.scale = torch.full((1, 1, 1, 1), 255.0, **f32)
        self.mean = torch.tensor(preprocess.mean, **f32).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, **f32).view(1, 3, 1, 1)
        self.pinned = None  # uint8 [capacity, S, S, 3], page-locked, grown on demand
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.uploaded = None  # event: the last upload out of the pinned buffer has finished

    def normalize(self, u8_nchw):
        """uint8 NCHW (contiguous) on the device -> float32, normalised in place."""
        return u8_nchw.float().div_(self.scale).sub_(self.mean).div_(self.std)

    def chunks(self, crops, rows_per_item: int = 1) -> Iterator:
        """Normalised float32 ``[rows, 3, S, S]`` device tensors, chunk after chunk, covering every crop in order."""
        parts = as_parts(crops)
        n = sum(p.shape[0] for p in parts)
        for a, b in chunk_rows(n, rows_per_item, self.overlap):
            yield self._upload(parts, a, b) if self.cuda else self._host(parts, a, b)

    def _host(self, parts, a: int, b: int):
        import torch

        return torch.from_numpy(normalize_batch(list(_pieces(parts, a, b)), self.preprocess))

    def _staging(self, rows: int, shape: tuple[int, ...]):
        import torch

        if self.pinned is None or self.pinned.shape[0] < rows or tuple(self.pinned.shape[1:]) != shape:
            if self.uploaded is not None:
                self.uploaded.synchronize()
            self.pinned = torch.empty((rows, *shape), dtype=torch.uint8, pin_memory=True)
        return self.pinned

    def _upload(self, parts, a: int, b: int):
        import torch

        if a == 0 and self.uploaded is not None:
            self.uploaded.synchronize()  # the previous call's copies have left the buffer before it is refilled
        n = sum(p.shape[0] for p in parts)
        pinned = self._staging(n, tuple(parts[0].shape[1:]))
        host = pinned.numpy()
        o = a
        for piece in _pieces(parts, a, b):
            host[o:o + piece.shape[0]] = piece
            o += piece.shape[0]
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            dev = pinned[a:b].to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        compute.wait_event(done)
        dev.record_stream(compute)  # allocated on the copy stream, read on the compute stream
        self.uploaded = done
        return self.normalize(dev.permute(0, 3, 1, 2).contiguous())
