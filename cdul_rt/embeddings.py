"""``label --save-embeddings``: each image's L2-normalised global-view embedding (float16) beside its labels.

Where they end up (in label-file row order):
- JSONL / CSV output: ``<out>.embeddings.npy`` (``[N, D]`` float16) and ``<out>.embeddings.paths.json`` (the N
  paths, a JSON list);
- Parquet: an ``embedding`` column (fixed-size list of float16); npz: an ``embeddings`` array.

During a run, rows stream into an append-only journal (``<out>.embeddings.journal.f16``: raw float16 rows, and
``<out>.embeddings.journal.jsonl``: one ``{"path", "dim"}`` line per row), written *before* the batch's label rows,
so a crash never leaves a labeled image without its embedding (a duplicate row from a re-labeled image is
dropped when finishing: the last one wins). ``finalize`` aligns the journal to the finished label file. A finished
output that gets more rows is carried back into the journal first, as ``LabelWriter`` does for Parquet / npz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.formats import JOURNAL, label_format
from cdul_rt.formats.base import EMBEDDING_DTYPE as DTYPE, embedding_files
from cdul_rt.labelfile import read_label_file


def clear_embeddings(out: Path) -> None:
    for path in embedding_files(out).values():
        path.unlink(missing_ok=True)


class EmbeddingWriter:
    """Append embeddings batch by batch; ``finalize()`` after the label writer has closed."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.format = label_format(self.out)
        self.files = embedding_files(self.out)
        self._raw = self._paths = None
        self.dim: int | None = None

    def _repair(self) -> int:
        """Cut the journal to the rows present in both of its files (a crash can leave one longer); returns them."""
        jp, raw = self.files["journal_paths"], self.files["journal"]
        if not jp.is_file():
            raw.unlink(missing_ok=True)
            return 0
        JOURNAL.repair(jp)
        lines = jp.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
        if lines:
            self.dim = int(json.loads(lines[0])["dim"])
        size = raw.stat().st_size if raw.is_file() else 0
        n = min(len(lines), size // (2 * self.dim)) if self.dim else 0
        with open(jp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(lines[:n])
        with open(raw, "ab") as f:
            f.truncate(n * 2 * (self.dim or 0))
        return n

    def _open(self) -> None:
        if self._raw is not None:
            return
        if self._repair() == 0:
            self._carry_finished()
        self._raw = open(self.files["journal"], "ab")
        self._paths = open(self.files["journal_paths"], "a", encoding="utf-8", errors="surrogateescape")

    def _carry_finished(self) -> None:
        """More rows for a finished output: its embeddings go back into the journal first."""
        found = read_embeddings(self.out, missing_ok=True)
        if found is None:
            return
        paths, emb = found
        with open(self.files["journal"], "wb") as raw, open(self.files["journal_paths"], "w", encoding="utf-8",
                                                              errors="surrogateescape") as jp:
            for i in range(0, len(paths), 8192):
                raw.write(np.ascontiguousarray(emb[i:i + 8192], dtype=DTYPE).tobytes())
                jp.writelines(json.dumps({"path": p, "dim": emb.shape[1]}) + "\n" for p in paths[i:i + 8192])
        self.dim = int(emb.shape[1])

    def write_batch(self, paths: list[str], embeddings: np.ndarray) -> None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(paths):
            raise CdulError(f"expected {len(paths)} embeddings, got an array of shape {embeddings.shape}")
        self._open()
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise CdulError(f"embedding width {embeddings.shape[1]} differs from the {self.dim} already in "
                            f"{self.files['journal']}; use --overwrite to start fresh")
        self.dim = int(embeddings.shape[1])
        self._raw.write(np.ascontiguousarray(embeddings, dtype=DTYPE).tobytes())
        self._raw.flush()  # rows before paths: a row without its path line is cut off on the next open
        self._paths.write("".join(json.dumps({"path": p, "dim": self.dim}) + "\n" for p in paths))
        self._paths.flush()

    def close(self) -> None:
        for f in (self._raw, self._paths):
            if f is not None:
                f.close()
        self._raw = self._paths = None

    def finalize(self) -> None:
        """Align the journal with the (closed) label file and write the final form; nothing to do without one."""
        self.close()
        n = self._repair()
        if n == 0 and not self.files["journal_paths"].is_file():
            return
        label_paths = read_label_file(self.out).paths
        emb = _aligned(self.files, n, self.dim or 0, label_paths)
        self.format.add_embeddings(self.out, label_paths, emb)
        self.files["journal"].unlink(missing_ok=True)
        self.files["journal_paths"].unlink(missing_ok=True)


def _aligned(files: dict[str, Path], n: int, dim: int, label_paths: list[str]) -> np.ndarray:
    """Journal rows in the label file's order (the last row of a path wins); a memory map, not a copy."""
    rows = np.memmap(files["journal"], dtype=DTYPE, mode="r", shape=(n, dim)) if n else np.zeros((0, dim), DTYPE)
    last: dict[str, int] = {}
    with open(files["journal_paths"], encoding="utf-8", errors="surrogateescape") as f:
        for i, line in enumerate(f):
            if i < n:
                last[json.loads(line)["path"]] = i
    missing = [p for p in label_paths if p not in last]
    if missing:
        raise CdulError(f"{len(missing)} labeled images have no embedding (e.g. {missing[0]}): the label file was "
                        "partly made without --save-embeddings; rerun with --overwrite --save-embeddings")
    order = np.fromiter((last[p] for p in label_paths), dtype=np.int64, count=len(label_paths))
    return rows[order] if len(order) else np.zeros((0, dim), DTYPE)


def read_embeddings(label_file: str | Path, missing_ok: bool = False) -> tuple[list[str], np.ndarray] | None:
    """``(paths, float16 [N, D])`` saved with a label file by ``label --save-embeddings``."""
    label_file = Path(label_file)
    if label_file.is_dir():  # `label --cluster ray`'s Parquet shards
        return _read_shard_embeddings(label_file, missing_ok)
    found = label_format(label_file).read_embeddings(label_file)
    if found is None and not missing_ok:
        raise CdulError(f"{label_file} has no saved embeddings; label with --save-embeddings (add --overwrite to "
                        "an existing output made without them)")
    return found


def _read_shard_embeddings(out: Path, missing_ok: bool) -> tuple[list[str], np.ndarray] | None:
    from cdul_rt.distributed.shards import label_shards
    from cdul_rt.formats.parquet import FORMAT as PARQUET

    parts = [found for f in label_shards(out) if (found := PARQUET.read_embeddings(f)) is not None]
    if not parts:
        if missing_ok:
            return None
        raise CdulError(f"the Ray output {out} has no saved embeddings; label with --save-embeddings")
    return [p for paths, _ in parts for p in paths], np.concatenate([emb for _, emb in parts])
