"""What the Python API takes as an image: a path, encoded bytes, a PIL image or an ``HxWx3`` uint8 array.

Each becomes an RGB PIL image by the same rules as a file given to ``cdul-rt label`` (:mod:`cdul_rt.imageio`):
pixel limit, EXIF orientation, any mode to RGB. Pure PIL + numpy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, BadImage, decode_bytes, describe_error, open_rgb, rgb_image

if TYPE_CHECKING:
    from PIL import Image

    from cdul_rt.preprocess import PreprocessConfig

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image", np.ndarray]
"""One image for :class:`cdul_rt.Labeler` / :class:`cdul_rt.Classifier`: a file path, the bytes of an encoded
image (JPEG, PNG, ...), a PIL image, or an ``HxWx3`` (or ``HxW`` grey) uint8 array in RGB order."""


def describe(item: object) -> str:
    """A short name for an input in error messages: the path, or the kind and size of an in-memory image."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        return repr(str(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"{len(item)} bytes"
    if isinstance(item, Image.Image):
        return f"PIL image {item.width}x{item.height} {item.mode}"
    if isinstance(item, np.ndarray):
        return f"array {'x'.join(map(str, item.shape))} {item.dtype}"
    return type(item).__name__


def _from_array(arr: np.ndarray) -> "Image.Image":
    from PIL import Image

    if arr.dtype != np.uint8:
        raise BadImage(f"arrays must be uint8 (0-255), got {arr.dtype}; convert with "
                       "(x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), "L").convert("RGB")
    raise BadImage(f"arrays must be HxWx3 (RGB) or HxW (grey), got shape {arr.shape}")


def to_rgb(item: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS,
           draft: tuple[int, int] | None = None) -> "Image.Image":
    """Any :data:`ImageInput` -> an RGB PIL image. Raises on unreadable data (:func:`reason` turns it into text).

    ``draft``: as ``cdul-rt label --jpeg-draft`` (``(grid, model input size)``) for paths and bytes.
    """
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise BadImage("no such file" if not path.exists() else "not a file")
        return open_rgb(path, max_pixels, draft)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_bytes(item, max_pixels, draft)  # type: ignore[arg-type]  # any bytes-like (tested)
    if isinstance(item, Image.Image):
        return rgb_image(item, max_pixels)
    if isinstance(item, np.ndarray):
        img = _from_array(item)
        return rgb_image(img, max_pixels)
    raise BadImage(f"unsupported input type {type(item).__name__}; give a path, bytes, a PIL image or an HxWx3 "
                   "uint8 array")


def image_list(images: Iterable[ImageInput], what: str = "images") -> list[ImageInput]:
    """``images`` as a list of items. One image given where a list is expected is refused: iterating a path gives its
    characters and iterating an ``HxWx3`` array its rows (each would be labeled as a grey image). An ``NxHxWx3``
    array is a list of ``N`` images."""
    from PIL import Image

    single = isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))
    if single or (isinstance(images, np.ndarray) and images.ndim < 4):
        raise CdulError(f"{what} must be a list of images, got one {describe(images)}; wrap it in a list: [image]")
    return list(images)


def reason(exc: BaseException) -> str:
    """The one-line reason for an unreadable input, as the failures file of ``cdul-rt label`` words it."""
    return str(exc) if isinstance(exc, CdulError) else describe_error(exc)


def item_error(index: int, item: object, why: str) -> CdulError:
    return CdulError(f"image {index} ({describe(item)}): {why}")


def crops_of(item: ImageInput, grid: int, preprocess: "PreprocessConfig", max_pixels: int = DEFAULT_MAX_PIXELS,
             jpeg_draft: bool = False) -> np.ndarray:
    """uint8 ``[1+g^2, S, S, 3]``: the global view and the g x g tiles, exactly as ``cdul-rt label`` makes them
    (paths go through the label pipeline's own :func:`cdul_rt.decode.load_crops`). Raises on unreadable input."""
    from cdul_rt.crops import image_crops
    from cdul_rt.decode import load_crops

    if isinstance(item, (str, os.PathLike)):
        decoded = load_crops(Path(item), grid, preprocess, max_pixels, jpeg_draft)
        if decoded.crops is None:
            raise BadImage(decoded.error or "unreadable")
        return decoded.crops
    draft = (grid, preprocess.size) if jpeg_draft else None
    return image_crops(to_rgb(item, max_pixels, draft), grid, preprocess)


def prepare_crops(images: Iterable[ImageInput], grid: int, preprocess: "PreprocessConfig | Mapping[str, Any]",
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """float32 ``[n, 1+g^2, 3, S, S]``, normalised: what a labeler (e.g. the Triton ``labeler`` model) takes.

    ``preprocess``: a :class:`~cdul_rt.preprocess.PreprocessConfig` or its dict (as ``cdul_rt.json`` and
    ``manifest.json`` record it). Torch-free. A bad image raises a :class:`CdulError` naming it.

    >>> import numpy as np
    >>> from cdul_rt import prepare_crops
    >>> x = prepare_crops([np.zeros((48, 64, 3), np.uint8)], grid=3, preprocess={"size": 32})
    >>> x.shape, x.dtype
    ((1, 10, 3, 32, 32), dtype('float32'))
    """
    from cdul_rt.preprocess import PreprocessConfig, normalize_batch

    images = image_list(images)
    pp = preprocess if isinstance(preprocess, PreprocessConfig) else PreprocessConfig.from_dict(dict(preprocess))
    k, s = 1 + grid * grid, pp.size
    out = np.empty((len(images), k, 3, s, s), np.float32)
    for i, item in enumerate(images):
        try:
            out[i] = normalize_batch(crops_of(item, grid, pp, max_pixels), pp)
        except Exception as exc:  # noqa: BLE001 - any decoder failure: name the image
            raise item_error(i, item, reason(exc)) from exc
    return out
