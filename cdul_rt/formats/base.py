"""What every label-file format is: the interface of a format object, the rows and table it reads into.

A format either *appends* (JSONL, CSV: each batch goes straight into the output, a crash leaves at most a torn last
record that :meth:`LabelFormat.repair` cuts off) or is *finalised* (Parquet, npz: rows stream into a JSONL journal
beside the output and :meth:`LabelFormat.finalize` writes the whole file from it once, in one streaming pass).
:class:`cdul_rt.labelfile.LabelWriter` drives both kinds the same way through this interface.

A row is the dict ``{"path", "scores": {class: v}, "labels": [...], ["global", "aggregate"]: {class: v}}``
(``labels`` may be missing in rows read back from a finalised file, which stores scores only for npz).
"""

from __future__ import annotations

import abc
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdul_rt.fileio import atomic_path, atomic_write

PARTS = ("global", "aggregate")
EMBEDDING_DTYPE = np.float16  # `label --save-embeddings` rows, in every format


@dataclass
class LabelTable:
    """A whole label file in memory (for training and evaluation; labeling itself streams)."""

    paths: list[str]
    classes: list[str]
    scores: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def table_rows(table: LabelTable) -> Iterator[dict]:
    """A table's rows (no ``labels``: a table holds scores)."""
    for i, p in enumerate(table.paths):
        row = {"path": p, "scores": dict(zip(table.classes, table.scores[i].tolist()))}
        row.update({k: dict(zip(table.classes, v[i].tolist())) for k, v in table.parts.items()})
        yield row


def rows_table(rows: Iterator[dict], meta: dict) -> LabelTable:
    """Rows -> a dense table; the classes are the meta's, else the first row's."""
    paths, scores = [], []
    parts_rows: dict[str, list] = {k: [] for k in PARTS}
    classes = meta.get("classes")
    for row in rows:
        classes = classes or list(row["scores"])
        paths.append(row["path"])
        scores.append([row["scores"][c] for c in classes])
        for k in PARTS:
            if k in row:
                parts_rows[k].append([row[k][c] for c in classes])
    dense = np.asarray(scores, dtype=np.float32).reshape(len(paths), len(classes or []))
    parts = {k: np.asarray(v, dtype=np.float32) for k, v in parts_rows.items() if v and len(v) == len(paths)}
    return LabelTable(paths, list(classes or []), dense, parts, meta)


def is_text(name: str) -> bool:
    """False for a name holding lone surrogates (bytes that were not UTF-8, see ``os.fsdecode``)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """Valid UTF-8 text for a name: undecodable bytes shown as ``\\xNN``."""
    return name if is_text(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


def embedding_files(out: Path) -> dict[str, Path]:
    """``label --save-embeddings``'s files beside ``out``: the final ``.npy`` + paths (formats that keep them
    beside the output) and the run's append-only journal (every format)."""
    base = out.with_name(out.name + ".embeddings")
    return {"npy": Path(f"{base}.npy"), "paths": Path(f"{base}.paths.json"),
            "journal": Path(f"{base}.journal.f16"), "journal_paths": Path(f"{base}.journal.jsonl")}


class Appender(abc.ABC):
    """An output open for appending rows (what :meth:`LabelFormat.open` returns)."""

    def __init__(self, f: io.TextIOBase, classes: list[str]) -> None:
        self.file, self.classes = f, classes

    @abc.abstractmethod
    def encode(self, rows: list[dict]) -> str:
        """The text of ``rows`` in this format."""

    def append(self, rows: list[dict]) -> None:
        """One write + flush per call: a crash loses at most the rows in flight, never corrupts earlier ones."""
        self.file.write(self.encode(rows))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class LabelFormat:
    """One output format: how rows are appended or finalised, read back, and resumed after a crash.

    A format implements ``read`` or ``rows`` (the other follows), and either ``open`` (appendable) or ``finalize``.
    """

    name = ""
    suffix = ""
    appendable = False

    # -- read -------------------------------------------------------------------------------------------------
    def read(self, path: Path, meta: dict) -> LabelTable:
        """The whole file as a dense table (``meta``: the run's ``.meta.json``, for the classes)."""
        return rows_table(self.rows(path), meta)

    def rows(self, path: Path) -> Iterator[dict]:
        yield from table_rows(self.read(path, {}))

    # -- resume -----------------------------------------------------------------------------------------------
    def done_paths(self, path: Path) -> set[str]:
        """Paths already in an existing file."""
        return {row["path"] for row in self.rows(path)}

    def repair(self, path: Path) -> None:
        """Cut off what a crash left half written. A finalised format is written whole and renamed into place."""

    # -- write ------------------------------------------------------------------------------------------------
    def open(self, path: Path, classes: list[str], save_parts: bool) -> Appender:
        raise TypeError(f"{self.suffix} files are written once by finalize, not appended to")

    def finalize(self, rows: Callable[[], Iterator[dict]], out: Path, classes: list[str], save_parts: bool) -> None:
        """Write ``out`` from the run's rows (``rows()`` gives a fresh pass over the journal each time it is
        called). Appendable formats have nothing to finalise."""

    # -- embeddings (`label --save-embeddings`) ---------------------------------------------------------------
    def add_embeddings(self, out: Path, paths: list[str], emb: np.ndarray) -> None:
        """Store ``emb`` (rows in the label file's order): beside the output in ``<out>.embeddings.npy`` and
        ``<out>.embeddings.paths.json``, unless the format holds them itself."""
        files = embedding_files(out)
        with atomic_path(files["npy"], suffix=".partial.npy") as tmp:  # np.save appends .npy to any other name
            np.save(tmp, emb.astype(EMBEDDING_DTYPE, copy=False))
        atomic_write(files["paths"], json.dumps(paths, ensure_ascii=False), errors="surrogateescape")

    def read_embeddings(self, out: Path) -> tuple[list[str], np.ndarray] | None:
        """``(paths, float16 [N, D])`` stored by :meth:`add_embeddings`; None when there are none."""
        files = embedding_files(out)
        if not files["npy"].is_file():
            return None
        paths = json.loads(files["paths"].read_text(encoding="utf-8", errors="surrogateescape"))
        return paths, np.load(files["npy"], mmap_mode="r")


def open_append(path: Path) -> tuple[io.TextIOBase, bool]:
    """``path`` open for appending text, and whether it was new (missing or empty).

    ``surrogateescape``: a file name that is not valid UTF-8 is written as its original bytes (CSV) and read back
    identically; JSON escapes it (``\\udcXX``) itself.
    """
    new = not path.is_file() or path.stat().st_size == 0
    return open(path, "a", encoding="utf-8", errors="surrogateescape", newline=""), new
