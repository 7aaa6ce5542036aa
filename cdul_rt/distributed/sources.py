"""Image sources for distributed labeling: local folders or fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

A job's rows carry two names per image: ``path``, the name written to the output (relative to the labeled folder,
forward slashes, exactly as plain ``cdul-rt label`` writes it), and ``uri``, what a worker on any node opens. Remote
files are fetched whole into a local temporary file and decoded by :func:`cdul_rt.decode.load_crops`, so every
source goes through the one decoder (same pixels, same failure reasons).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PurePosixPath

from cdul_rt.decode import Decoded, load_crops
from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, iter_images, relative_name
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


def list_images(source: str | Path) -> list[tuple[str, str]]:
    """``(path, uri)`` of every image under ``source`` (recursive, sorted like plain ``label``)."""
    if not is_url(str(source)):
        root = Path(source)
        if not root.exists():
            raise CdulError(f"input {root} does not exist")
        return [(relative_name(p, root), str(p)) for p in iter_images(root)]
    fs, root = _filesystem(str(source))
    root = root.rstrip("/")
    if fs.isfile(root):
        return [(PurePosixPath(root).name, str(source))]
    if not fs.exists(root):
        raise CdulError(f"input {source} does not exist")
    found = []
    for p in fs.find(root):
        rel = p[len(root):].lstrip("/")
        if _is_image_name(rel):
            found.append((rel, fs.unstrip_protocol(p)))
    return sorted(found)


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
    fd, tmp = tempfile.mkstemp(suffix=PurePosixPath(path).suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_crops(Path(tmp), grid, cfg, max_pixels, jpeg_draft)
    finally:
        os.unlink(tmp)
