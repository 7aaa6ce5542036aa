"""Finding and decoding images robustly: every format users have, every mode converted to RGB.

Pure PIL + numpy (runs in decode worker processes, never imports torch). Errors are returned as reasons so that a
bad file becomes a row in the failures file, never a stopped run.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own hard limit (2x its warning threshold): ~13k x 13k
# Longest side / shortest side. Resizing the short side to S makes a view of S x (S * aspect) before the centre crop,
# so without this a 4 KB 3x200000 PNG (0.6 Mpx, far under --max-pixels) becomes a 224 x 14.9M view (13 GB). At 100:1
# that view stays under 25 MB at S = 224 for any image, and the centre crop of such a strip is 1% of it anyway.
MAX_ASPECT = 100


class BadImage(ValueError):
    """A readable file we refuse (empty, too large): its message is the whole reason."""


def iter_images(root: str | Path) -> Iterator[Path]:
    """Recursively yield image files under ``root`` in a stable (sorted, depth-first) order, streaming."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                yield Path(dirpath) / name


def discover_images(root: str | Path) -> list[Path]:
    return list(iter_images(root))


def relative_name(path: Path, root: Path) -> str:
    """The path written to outputs: relative to the labeled folder, with forward slashes."""
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited on white; 16-bit and float data are scaled to 8 bits.

    The scale is the pixel type's range, never the image's content (one white pixel must not change the others):
    16-bit integers (``I;16*``, and ``I``, which is how PIL opens 16-bit PNGs) by 65535, floats (``F``) by 1.0,
    the usual convention for float images (values outside [0, 1] are clipped, NaN becomes 0).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
        hi = 1.0 if img.mode == "F" else 65535.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX
    return img


def min_tile_side(width: int, height: int, grid: int) -> int:
    """Shortest side of any tile of the g x g grid (tile borders at round(k*L/g), as :mod:`cdul_rt.crops`)."""
    def edges(length: int) -> list[int]:
        return [int(np.floor(k * length / grid + 0.5)) for k in range(grid + 1)]

    return min(b - a for e in (edges(width), edges(height)) for a, b in zip(e, e[1:]))


def draft_size(width: int, height: int, grid: int, min_tile: int) -> tuple[int, int] | None:
    """The smallest JPEG DCT-domain downscale (1/2, 1/4, 1/8) that keeps every grid tile >= ``min_tile`` a side.

    libjpeg decodes at 1/s scale for almost nothing, which makes decoding large photos several times faster. The
    global view and each tile are then resized to the model input from at least ``min_tile`` pixels, as without
    draft, so only the resampling source differs. ``None``: no downscale keeps the tiles large enough.
    """
    best = None
    for scale in (2, 4, 8):
        w, h = -(-width // scale), -(-height // scale)  # libjpeg rounds scaled sizes up
        if min_tile_side(w, h, grid) < min_tile:
            break
        best = (w, h)
    return best


def check_aspect(width: int, height: int) -> None:
    """Refuse images whose sides differ by more than :data:`MAX_ASPECT` (checked on the header, before decoding)."""
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        ratio = max(width, height) / max(1, min(width, height))
        raise BadImage(f"image of {width}x{height} px has an aspect ratio of {ratio:.0f}:1, above the {MAX_ASPECT}:1 "
                       "limit (resizing its short side to the model input would need a huge intermediate image)")


def open_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
             draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode the first frame, apply EXIF orientation, convert to RGB. Raises on anything unreadable.

    Images above ``max_pixels`` are refused before decoding (decompression-bomb guard); truncated files raise
    instead of being silently padded with grey. ``draft=(grid, min_tile)`` lets large JPEGs decode downscaled in
    the DCT domain as far as :func:`draft_size` allows (other formats decode in full).
    """
    if Path(path).stat().st_size == 0:
        raise BadImage("empty file (0 bytes)")
    return _decode(path, max_pixels, draft)


def decode_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """:func:`open_rgb` for an encoded image held in memory (the Python API's ``bytes`` inputs)."""
    if len(data) == 0:
        raise BadImage("empty bytes (0 bytes)")
    return _decode(io.BytesIO(bytes(data)), max_pixels, draft)


def rgb_image(img: Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A PIL image the caller opened, treated as :func:`open_rgb` treats a file: pixel limit, EXIF orientation,
    any mode to RGB (its current frame). The caller's image is not modified."""
    if img.width * img.height > max_pixels:
        raise BadImage(f"image of {img.width}x{img.height} px exceeds the {max_pixels} pixel limit (--max-pixels)")
    check_aspect(img.width, img.height)
    img.load()
    return _to_rgb(ImageOps.exif_transpose(img))


def _decode(source, max_pixels: int, draft: tuple[int, int] | None) -> Image.Image:
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as img:
            if img.width * img.height > max_pixels:
                raise BadImage(f"image of {img.width}x{img.height} px exceeds the {max_pixels} pixel limit (--max-pixels)")
            check_aspect(img.width, img.height)
            if draft is not None and img.format == "JPEG":
                target = draft_size(img.width, img.height, *draft)
                if target is not None:
                    img.draft(img.mode, target)
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for the failures file."""
    if isinstance(exc, BadImage):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"decompression bomb: {exc}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image (or an unsupported format)"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"truncated image: {exc}"
    return f"{type(exc).__name__}: {exc}"
