"""Image sources for distributed labeling: local folders or fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

A job's rows carry two names per image: ``path``, the name written to the output (relative to the labeled folder,
forward slashes, exactly as plain ``cdul-rt label`` writes it), and ``uri``, what a worker on any node opens. Remote
objects are read whole into memory and decoded by the decoder :func:`cdul_rt.decode.load_crops` uses, so every
source gives the same pixels and the same failure reasons. Listings are streamed (:func:`iter_listing`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cdul_rt.crops import image_crops
from cdul_rt.decode import Decoded, load_crops
from cdul_rt.errors import CdulError
from cdul_rt.imageio import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, decode_bytes, describe_error, iter_images,
                             relative_name)
from cdul_rt.preprocess import PreprocessConfig

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


def is_url(source: str) -> bool:
    """``s3://bucket/x`` is a URL; ``/data/x`` and ``C:\\x`` are not."""
    return bool(_URL.match(str(source)))


def _filesystem(url: str):
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with ray[data]
        raise CdulError(f"reading {url} needs fsspec; install it with `pip install fsspec`") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise CdulError(f"cannot open {url}: {exc} (install the fsspec filesystem package for this scheme, "
                        "e.g. s3fs for s3://, gcsfs for gs://)") from exc


def _is_image_name(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(parts) and rel.lower().endswith(IMAGE_SUFFIXES) and not any(p.startswith(".") for p in parts)


def iter_listing(source: str | Path) -> Iterator[tuple[str, str]]:
    """``(path, uri)`` of every image under ``source``, streamed one directory (object-store prefix) at a time, so a
    listing of millions of names is never held whole; names are sorted within a directory, directories depth-first.
    """
    if not is_url(str(source)):
        root = Path(source)
        if not root.exists():
            raise CdulError(f"input {root} does not exist")
        for p in iter_images(root):
            yield relative_name(p, root), str(p)
        return
    fs, root = _filesystem(str(source))
    root = root.rstrip("/")
    if fs.isfile(root):
        yield PurePosixPath(root).name, str(source)
        return
    if not fs.exists(root):
        raise CdulError(f"input {source} does not exist")
    # walk lists one prefix per call (S3: one delimited ListObjectsV2 stream per "directory")
    for dirpath, dirnames, filenames in fs.walk(root, detail=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = dirpath.rstrip("/")
        for name in sorted(filenames):
            full = f"{base}/{name}"
            rel = full[len(root):].lstrip("/")
            if _is_image_name(rel):
                yield rel, fs.unstrip_protocol(full)


def list_images(source: str | Path) -> list[tuple[str, str]]:
    """``(path, uri)`` of every image under ``source`` (recursive, sorted like plain ``label``); small inputs only,
    jobs stream :func:`iter_listing`."""
    return sorted(iter_listing(source))


def crops_from_bytes(name: str, data: bytes, grid: int, cfg: PreprocessConfig,
                     max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_draft: bool = False) -> Decoded:
    """:func:`cdul_rt.decode.load_crops` for an encoded image in memory (a tar member, an object's bytes): the same
    decoder, so the same pixels and the same failure reasons as the file."""
    try:
        img = decode_bytes(data, max_pixels, (grid, cfg.size) if jpeg_draft else None)
        return Decoded(Path(name), image_crops(img, grid, cfg))
    except CdulError as exc:
        return Decoded(Path(name), None, str(exc))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is data, not a crash
        msg = describe_error(exc)
        return Decoded(Path(name), None, "empty file (0 bytes)" if msg == "empty bytes (0 bytes)" else msg)


def decode_uri(uri: str, grid: int, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
               jpeg_draft: bool = False) -> Decoded:
    """Crops of one image, local or remote; any failure (also a failed download) is returned as a reason."""
    if not is_url(uri):
        return load_crops(Path(uri), grid, cfg, max_pixels, jpeg_draft)
    try:
        fs, path = _filesystem(uri)
        with fs.open(path, "rb") as f:
            data = f.read()
    except CdulError as exc:
        return Decoded(Path(uri), None, str(exc))
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable object is data, not a crash
        return Decoded(Path(uri), None, f"cannot read {uri}: {type(exc).__name__}: {exc}")
    return crops_from_bytes(uri, data, grid, cfg, max_pixels, jpeg_draft)
