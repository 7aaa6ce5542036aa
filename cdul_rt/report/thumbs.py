"""Thumbnails for the report: small JPEGs in a folder beside the page, or embedded as data URIs for small sets."""

from __future__ import annotations

import base64
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from cdul_rt.fileio import atomic_write

THUMB_SIDE = 160
EMBED_LIMIT = 500  # up to this many images, `--thumbs auto` embeds them (the page stays one file, ~1.5 MB)


def thumb_name(rel_path: str, stamp: str = "") -> str:
    """Stable file name per image path and version (``stamp``: its size and mtime), so a rerun reuses the
    thumbnails it already made, and an image that changed gets a new one."""
    key = rel_path.encode("utf-8", "surrogatepass") + b"\0" + stamp.encode()
    return hashlib.sha1(key).hexdigest()[:20] + ".jpg"


def _thumbnail_bytes(path: Path, side: int) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a fraction of the size (DCT scaling), much faster
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((side, side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return buf.getvalue()


def make_thumbnails(rel_paths: list[str], root: Path, mode: str, folder: Path, page_dir: Path,
                    workers: int = 4, progress: bool = True) -> list[str | None]:
    """Image source per path: a ``data:`` URI (``mode="embed"``), a path relative to the page (``"folder"``), or
    ``None`` when the image cannot be read (or ``mode="none"``)."""
    if mode == "none":
        return [None] * len(rel_paths)
    from tqdm import tqdm

    if mode == "folder":
        folder.mkdir(parents=True, exist_ok=True)

    def one(rel: str) -> str | None:
        if mode == "folder":
            try:
                st = (root / rel).stat()
                target = folder / thumb_name(rel, f"{st.st_size}-{st.st_mtime_ns}")
                if not target.is_file():
                    atomic_write(target, _thumbnail_bytes(root / rel, THUMB_SIDE), sync=False)
            except Exception:  # noqa: BLE001 - any unreadable image just gets no thumbnail
                return None
            return quote(target.relative_to(page_dir).as_posix()) if target.is_relative_to(page_dir) else target.as_uri()
        try:
            return "data:image/jpeg;base64," + base64.b64encode(_thumbnail_bytes(root / rel, THUMB_SIDE)).decode()
        except Exception:  # noqa: BLE001
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(one, rel_paths), total=len(rel_paths), desc="thumbnails", unit="img",
                         disable=not progress, dynamic_ncols=True))
