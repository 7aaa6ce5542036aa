"""The global view and the g x g tiles built with torch on any device, with the CPU path's exact geometry.

The CPU path (:mod:`cdul_rt.crops` + :mod:`cdul_rt.preprocess`) crops each view out of the PIL image, resizes it
with PIL (torchvision ``Resize``: shorter side -> S, longer side truncated), center-crops it (torchvision
``CenterCrop`` offsets ``int(round((h - S) / 2))``) and normalises. Here the same boxes, sizes and offsets come
from the same functions (:func:`view_plan`), so the only difference left is the resampler: PIL's antialiased
bicubic vs ``F.interpolate(mode="bicubic", antialias=True)``, which implements the same filter (a = -0.5, support
widened by the downscale factor), run in PIL's two passes (:func:`resize_like_pil`). On the same decoded pixels
(CPU tensors) the crops differ from PIL's by <= 1 grey level, on <0.1% of the values (BENCHMARKS.md).

Resizes are batched: every view with the same source size and the same output size, across all images of the
batch, goes through one ``F.interpolate`` call (a folder of equal-sized photos needs a handful of calls per batch,
not ``k * (1 + g^2)``). The result is one tensor ``[k * (1 + g^2), 3, S, S]`` in the order of the CPU path
(per image: global view, then the tiles row by row), normalised in the dtype the encoder runs in.

torch is imported lazily; :func:`view_plan` is pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdul_rt.crops import grid_boxes
from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, resize_shortest

# PreprocessConfig.interpolation -> F.interpolate mode: the two antialiased filters torch shares with PIL (its
# "nearest-exact" misses PIL's NEAREST on some pixels, and it has no Lanczos; such models use --decode cpu).
_TORCH_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


@dataclass(frozen=True)
class View:
    """One crop of one image: the box cut from the image, the size it is resized to, the center crop after."""

    box: tuple[int, int, int, int]  # left, top, right, bottom in the decoded (EXIF-oriented) image
    resize: tuple[int, int] | None  # (w, h) to resize the box to; None: the box already has that size
    offset: tuple[int, int] | None  # (left, top) of the S x S center crop of the resized box; None: no crop

    @property
    def key(self) -> tuple:
        """Views with equal keys resize alike, so they share one ``F.interpolate`` call."""
        left, top, right, bottom = self.box
        return (bottom - top, right - left, self.resize, self.offset)


def view_geometry(width: int, height: int, cfg: PreprocessConfig) -> tuple[tuple[int, int] | None,
                                                                          tuple[int, int] | None]:
    """(resize (w, h) or None, center-crop offset (left, top) or None) of one view, as :func:`preprocess_uint8`."""
    s = cfg.size
    if cfg.resize_mode == "squash":
        return ((s, s) if (width, height) != (s, s) else None), None
    w, h = resize_shortest(width, height, s)
    resize = (w, h) if (w, h) != (width, height) else None
    offset = (int(round((w - s) / 2.0)), int(round((h - s) / 2.0))) if (w, h) != (s, s) else None
    return resize, offset


def view_plan(width: int, height: int, grid: int, cfg: PreprocessConfig) -> list[View]:
    """The ``1 + g^2`` views of a ``width x height`` image: the whole image, then the tiles row by row.

    Raises the CPU path's own :class:`CdulError` for an image too small for the grid.
    """
    boxes = [(0, 0, width, height), *grid_boxes(width, height, grid)]
    return [View(b, *view_geometry(b[2] - b[0], b[3] - b[1], cfg)) for b in boxes]


def check_interpolation(cfg: PreprocessConfig) -> str:
    """The torch mode for the model's interpolation, or a clear error where torch has no match."""
    mode = _TORCH_MODES.get(cfg.interpolation)
    if mode is None:
        raise CdulError(f"the device crop path has no {cfg.interpolation!r} resize (torch supports "
                        f"{', '.join(sorted(_TORCH_MODES))}); use --decode cpu for this model")
    return mode


def resize_like_pil(x, size: tuple[int, int], mode: str = "bicubic"):
    """uint8 ``[n, 3, h, w]`` -> uint8 ``[n, 3, H, W]`` (``size`` = (W, H)) as PIL's ``Image.resize`` computes it.

    PIL resamples in two passes, horizontal then vertical, rounding and clipping to uint8 in between; doing the
    same with two one-axis antialiased ``F.interpolate`` calls matches it to <= 1 grey level on any image (one 2-D
    call, which skips the intermediate clipping, differs by up to ~25 levels next to hard edges on noise).
    """
    import torch
    import torch.nn.functional as F

    w, h = size
    y = x.float()
    for shape in ((y.shape[-2], w), (h, w)):
        if tuple(y.shape[-2:]) != shape:
            y = F.interpolate(y, size=shape, mode=mode, antialias=True, align_corners=False).round_().clamp_(0, 255)
    return y.to(torch.uint8)


def crops_uint8(images: list, plans: list[list[View]], cfg: PreprocessConfig):
    """uint8 ``[k * (1 + g^2), 3, S, S]`` on the images' device from uint8 ``[3, H, W]`` tensors and their plans.

    Each group of equal-keyed views is stacked, resized with :func:`resize_like_pil` (one call per group),
    center-cropped and scattered to its place in the output.
    """
    import torch

    if not images:
        raise CdulError("no images to crop")
    mode = check_interpolation(cfg)
    s, per = cfg.size, len(plans[0])
    out = torch.empty((len(images) * per, 3, s, s), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple, list[tuple[int, int, int]]] = {}
    for i, plan in enumerate(plans):
        for j, view in enumerate(plan):
            groups.setdefault(view.key, []).append((i * per + j, i, j))
    for (_, _, resize, offset), members in groups.items():
        parts = []
        for _, i, j in members:
            left, top, right, bottom = plans[i][j].box
            parts.append(images[i][:, top:bottom, left:right])
        x = torch.stack(parts)
        if resize is not None:
            x = resize_like_pil(x, resize, mode)
        if offset is not None:
            left, top = offset
            x = x[:, :, top:top + s, left:left + s]
        index = torch.tensor([m[0] for m in members], device=out.device)
        out.index_copy_(0, index, x.contiguous())
    return out


def normalize(crops, cfg: PreprocessConfig, dtype=None):
    """uint8 ``[B, 3, S, S]`` -> ``(x / 255 - mean) / std`` in float32 (as :func:`normalize_batch`), then ``dtype``."""
    import torch

    x = crops.float().div_(255.0)
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device)[:, None, None]
    x = x.sub_(mean).div_(std)
    return x if dtype is None or dtype == torch.float32 else x.to(dtype)


def device_crops(images: list, grid: int, cfg: PreprocessConfig, dtype=None):
    """Normalised ``[k * (1 + g^2), 3, S, S]`` (in ``dtype``, default float32) from uint8 ``[3, H, W]`` tensors."""
    plans = [view_plan(int(im.shape[-1]), int(im.shape[-2]), grid, cfg) for im in images]
    return normalize(crops_uint8(images, plans, cfg), cfg, dtype)
