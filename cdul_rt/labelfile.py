"""Label files: JSONL (default), CSV, Parquet and dense ``.npz``, written incrementally and resumable.

This is the front every caller uses (:class:`LabelWriter`, :func:`read_label_file`, :func:`select_labels`, the
sidecars); each format is a small object in :mod:`cdul_rt.formats`, looked up by suffix in its ``FORMATS`` table.

JSONL and CSV are appended batch by batch; after a crash (even ``kill -9``) a partly written last line is cut off on
the next run. Parquet and ``.npz`` cannot be appended to, so their rows stream into ``<out>.journal.jsonl`` and are
converted at the end in one streaming pass (memory stays flat). ``<out>.meta.json`` records how the file was made;
``<out>.failures.jsonl`` lists images that could not be read.

File names that are not valid UTF-8 (possible on Linux) are carried as Python does (``os.fsdecode``: each bad byte
becomes a lone surrogate, ``os.fsencode`` gives the exact bytes back) and stored losslessly in every format: JSONL
as ``\\udcXX`` escapes, CSV as the original bytes, npz as the code points, Parquet as a readable ``path`` (bad bytes
shown as ``\\xNN``) plus a binary ``path_bytes`` column holding the exact name (present only when needed).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_path
from cdul_rt.formats import JOURNAL, LabelFormat, format_named, label_format
from cdul_rt.formats.base import PARTS, Appender, LabelTable, display_name

__all__ = ["LabelTable", "LabelWriter", "display_name", "done_paths", "iter_rows", "output_format",
           "read_label_file", "read_meta", "repair_tail", "select_labels", "sidecar", "write_label_file"]


def output_format(path: Path) -> str:
    """The name of ``path``'s format (``"jsonl"``, ...); unknown suffixes are refused with the known ones."""
    return label_format(path).name


def sidecar(path: Path, kind: str) -> Path:
    return path.with_name(path.name + {"meta": ".meta.json", "failures": ".failures.jsonl",
                                       "journal": ".journal.jsonl", "lock": ".lock"}[kind])


def select_labels(scores: np.ndarray, classes: list[str], threshold: float, top_k: int | None) -> list[str]:
    """Classes at or above ``threshold`` (or the ``top_k`` best), highest score first."""
    order = np.argsort(-scores, kind="stable")
    if top_k:
        return [classes[i] for i in order[:top_k]]
    return [classes[i] for i in order if scores[i] >= threshold]


# -- reading ------------------------------------------------------------------------------------------------------
def read_meta(path: Path) -> dict:
    meta = sidecar(Path(path), "meta")
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CdulError(f"{meta} is not valid JSON ({exc}); delete it or rerun with --overwrite") from exc


def iter_rows(path: Path) -> Iterator[dict]:
    """Rows as dicts ``{"path", "scores": {class: v}, "labels", ["global", "aggregate"]}`` in any format."""
    path = Path(path)
    yield from label_format(path).rows(path)


def read_label_file(path: str | Path) -> LabelTable:
    """Read any label file written by ``cdul-rt label`` (or training's refined labels) into a dense table."""
    path = Path(path)
    if not path.is_file():
        raise CdulError(f"label file {path} not found")
    fmt, meta = label_format(path), read_meta(path)
    return fmt.read(path, meta)


# -- resume -------------------------------------------------------------------------------------------------------
def _format(fmt: str | LabelFormat) -> LabelFormat:
    return format_named(fmt) if isinstance(fmt, str) else fmt


def repair_tail(path: Path, fmt: str | LabelFormat) -> None:
    """Cut off what a crash left half written at the end of ``path`` (a torn JSONL line or CSV record) so the file
    is valid again."""
    _format(fmt).repair(Path(path))


def done_paths(path: Path, fmt: str | LabelFormat) -> set[str]:
    """Paths already in ``path`` (none when it does not exist)."""
    return _format(fmt).done_paths(path) if path.is_file() else set()


# -- writing ------------------------------------------------------------------------------------------------------
class LabelWriter:
    """Append rows batch by batch; ``close()`` finalises Parquet / npz. Resumes what a previous run wrote.

    An appendable format (JSONL, CSV) takes the rows itself; the others stream them into a JSONL journal
    (``<out>.journal.jsonl``) that ``close()`` turns into the output.
    """

    def __init__(self, path: str | Path, classes: list[str], threshold: float = 0.5, top_k: int | None = None,
                 save_parts: bool = False) -> None:
        self.path = Path(path)
        self.format = label_format(self.path)
        self.classes, self.threshold, self.top_k, self.save_parts = list(classes), threshold, top_k, save_parts
        self.journal_format = self.format if self.format.appendable else JOURNAL
        self.journal = self.path if self.format.appendable else sidecar(self.path, "journal")
        self._file: Appender | None = None
        self.written = 0
        self.before_open: Callable[[], None] | None = None  # called once, before the file is first touched

    def existing(self) -> set[str]:
        """Paths already in the output (after repairing a crash-damaged tail)."""
        self.journal_format.repair(self.journal)
        done = done_paths(self.journal, self.journal_format)
        if self.journal != self.path and self.path.is_file():
            done |= done_paths(self.path, self.format)
        return done

    def open(self) -> None:
        """Prepare to write. The file itself is opened on the first batch, so a resumed run with nothing left to
        label does not copy a finished Parquet / npz into a journal only to write it out again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open_file(self) -> Appender:
        if self._file is not None:
            return self._file
        if self.before_open is not None:
            self.before_open()
        if self.journal != self.path and self.path.is_file() and not self.journal.is_file():
            # a finished parquet/npz gets more rows: carry its rows into a fresh journal first, whole or not at all
            # (a journal cut short by a crash would be finalised without the rows it did not reach)
            rows = self.format.rows(self.path)
            with atomic_path(self.journal, suffix=".carry") as tmp:
                carry = self.journal_format.open(tmp, self.classes, self.save_parts)
                try:
                    while chunk := list(itertools.islice(rows, 8192)):
                        carry.append(chunk)
                finally:
                    carry.close()
        self._file = self.journal_format.open(self.journal, self.classes, self.save_parts)
        return self._file

    def write_batch(self, paths: list[str], final: np.ndarray, s_global: np.ndarray | None = None,
                    s_ag: np.ndarray | None = None) -> list[tuple[str, str]]:
        """Append one batch. Rows whose scores are not finite (NaN / inf: broken weights or an overflowing
        precision) are never written (they would not be JSON); they come back as ``(path, reason)`` failures."""
        arrays = [final, *((s_global, s_ag) if self.save_parts else ())]
        finite = np.all([np.isfinite(np.asarray(a, dtype=np.float64)).all(axis=1) for a in arrays], axis=0)
        refused = [(p, "the model returned non-finite scores (NaN or inf); check --weights and --precision")
                   for p, ok in zip(paths, finite) if not ok]
        if not finite.any():
            return refused
        out = self._open_file()
        rows = []
        for i, p in enumerate(paths):
            if not finite[i]:
                continue
            row = {"path": p, "scores": dict(zip(self.classes, _fmt(final[i]))),
                   "labels": select_labels(final[i], self.classes, self.threshold, self.top_k)}
            if self.save_parts:
                row.update({k: dict(zip(self.classes, _fmt(v[i]))) for k, v in zip(PARTS, (s_global, s_ag))})
            rows.append(row)
        out.append(rows)  # one write + flush per batch: a crash loses at most the batch in flight
        self.written += int(finite.sum())
        return refused

    def close(self, finalize: bool = True) -> None:
        if self._file is None and not self.path.is_file() and not self.journal.is_file():
            self._open_file()  # nothing was labeled: still leave a valid (empty) output behind
        if self._file is not None:
            self._file.close()
            self._file = None
        if finalize and self.journal != self.path and self.journal.is_file():
            with atomic_path(self.path) as tmp:  # on an error the journal stays: the next run finalises again
                self.format.finalize(lambda: self.journal_format.rows(self.journal), tmp, self.classes,
                                     self.save_parts)
            self.journal.unlink()


def _fmt(v: np.ndarray) -> list[float]:
    return [float(x) for x in np.round(v.astype(np.float64), 7)]


def write_label_file(path: str | Path, paths: list[str], classes: list[str], scores: np.ndarray,
                     meta: dict | None = None, threshold: float = 0.5, top_k: int | None = None,
                     parts: dict[str, np.ndarray] | None = None) -> Path:
    """Write a whole table at once (training's refined pseudo labels), replacing any existing file."""
    path = Path(path)
    for p in (path, sidecar(path, "journal")):
        p.unlink(missing_ok=True)
    writer = LabelWriter(path, classes, threshold, top_k, save_parts=bool(parts))
    writer.open()
    for i in range(0, len(paths), 4096):
        sl = slice(i, i + 4096)
        writer.write_batch(paths[sl], scores[sl], *((parts["global"][sl], parts["aggregate"][sl]) if parts else ()))
    writer.close()
    if meta is not None:
        sidecar(path, "meta").write_text(json.dumps({**meta, "classes": list(classes)}, indent=2), encoding="utf-8")
    return path
