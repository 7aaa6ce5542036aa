"""Dense ``.npz`` (``np.load``-compatible): ``paths``, ``classes``, ``scores`` [, ``global``, ``aggregate``] arrays,
finalised from a JSONL journal by streaming rows into memory-mapped ``.npy`` members (memory stays flat).

A name that is not valid UTF-8 is stored as its code points (lone surrogates survive a unicode array).
``label --save-embeddings`` adds an ``embeddings`` array (float16).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cdul_rt.fileio import atomic_path
from cdul_rt.formats.base import EMBEDDING_DTYPE, PARTS, LabelFormat, LabelTable

EMBEDDING_KEY = "embeddings"


def _scan(rows: Iterator[dict]) -> tuple[int, int]:
    """How many rows, and the longest path among them."""
    n = longest = 0
    for row in rows:
        n += 1
        longest = max(longest, len(row["path"]))
    return n, longest


class Npz(LabelFormat):
    name, suffix, appendable = "npz", ".npz", False

    def read(self, path: Path, meta: dict) -> LabelTable:
        """``meta``: the sidecar's; without one, the ``meta`` array an older writer stored inside."""
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k].astype(np.float32) for k in PARTS if k in z.files}
            if "meta" in z.files and not meta:
                meta = json.loads(str(z["meta"]))
            return LabelTable([str(p) for p in z["paths"]], [str(c) for c in z["classes"]],
                              z["scores"].astype(np.float32), parts, meta)

    def done_paths(self, path: Path) -> set[str]:
        return set(self.read(path, {}).paths)

    def finalize(self, rows: Callable[[], Iterator[dict]], out: Path, classes: list[str], save_parts: bool) -> None:
        """Stream the rows (read twice) into .npy members of a zip without holding them all."""
        import tempfile

        n, longest = _scan(rows())
        keys = ["scores", *(PARTS if save_parts else ())]
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            arrays = {k: np.lib.format.open_memmap(Path(tmp) / f"{k}.npy", "w+", np.float32, (n, len(classes)))
                      for k in keys}
            paths = np.lib.format.open_memmap(Path(tmp) / "paths.npy", "w+", f"<U{max(longest, 1)}", (n,))
            for i, row in enumerate(rows()):
                paths[i] = row["path"]
                for k in keys:
                    arrays[k][i] = [row[k][c] for c in classes]
            for a in (*arrays.values(), paths):
                a.flush()
            del arrays, paths
            np.save(Path(tmp) / "classes.npy", np.asarray(classes))
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                for k in ("paths", "classes", *keys):
                    z.write(Path(tmp) / f"{k}.npy", f"{k}.npy")

    def add_embeddings(self, out: Path, paths: list[str], emb: np.ndarray) -> None:
        """Copy the zip's members into a new one with an ``embeddings`` member (replacing an older one)."""
        with atomic_path(out) as tmp, zipfile.ZipFile(out) as src, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
            for item in src.infolist():
                if item.filename != f"{EMBEDDING_KEY}.npy":
                    with src.open(item) as r, dst.open(item.filename, "w", force_zip64=True) as w:
                        while chunk := r.read(1 << 24):
                            w.write(chunk)
            with dst.open(f"{EMBEDDING_KEY}.npy", "w", force_zip64=True) as w:
                np.lib.format.write_array(w, np.ascontiguousarray(emb, dtype=EMBEDDING_DTYPE))

    def read_embeddings(self, out: Path) -> tuple[list[str], np.ndarray] | None:
        if not out.is_file():
            return None
        with np.load(out, allow_pickle=False) as z:
            if EMBEDDING_KEY not in z.files:
                return None
            return [str(p) for p in z["paths"]], z[EMBEDDING_KEY]


FORMAT = Npz()
