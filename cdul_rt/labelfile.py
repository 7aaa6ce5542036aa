"""Label files: JSONL (default), CSV, Parquet and dense ``.npz``, written incrementally and resumable.

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

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_path

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".npz": "npz"}
PARTS = ("global", "aggregate")


def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CdulError(f"unknown output format {path.suffix!r} for {path}; use one of {', '.join(FORMATS)}")
    return fmt


def sidecar(path: Path, kind: str) -> Path:
    return path.with_name(path.name + {"meta": ".meta.json", "failures": ".failures.jsonl",
                                       "journal": ".journal.jsonl", "lock": ".lock"}[kind])


def select_labels(scores: np.ndarray, classes: list[str], threshold: float, top_k: int | None) -> list[str]:
    """Classes at or above ``threshold`` (or the ``top_k`` best), highest score first."""
    order = np.argsort(-scores, kind="stable")
    if top_k:
        return [classes[i] for i in order[:top_k]]
    return [classes[i] for i in order if scores[i] >= threshold]


@dataclass
class LabelTable:
    """A whole label file in memory (for training and evaluation; labeling itself streams)."""

    paths: list[str]
    classes: list[str]
    scores: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# -- reading ------------------------------------------------------------------------------------------------------
def read_meta(path: Path) -> dict:
    meta = sidecar(Path(path), "meta")
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CdulError(f"{meta} is not valid JSON ({exc}); delete it or rerun with --overwrite") from exc


def _rows_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise CdulError(f"{path}:{n} is not valid JSON ({exc})") from exc


def csv_layout(cols: list[str]) -> dict[str, list[str]]:
    """Split a label CSV's score columns into ``{"scores": classes, ["global", "aggregate"]: classes}``.

    Written as ``<classes>`` or ``<classes>, global:<classes>, aggregate:<classes>``; decided by that structure
    (not by ``:`` in a name), so class names may contain ``:``.
    """
    n = len(cols) // 3
    if n and len(cols) == 3 * n and all(cols[k * n + i] == f"{part}:{cols[i]}" for k, part in enumerate(PARTS, 1)
                                        for i in range(n)):
        return {"scores": cols[:n], **{part: cols[:n] for part in PARTS}}
    return {"scores": cols}


def _rows_csv(path: Path) -> Iterator[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["path", "labels"]:
            raise CdulError(f"{path} is not a cdul-rt label CSV (expected columns path,labels,<classes>...)")
        layout = csv_layout(header[2:])
        for row in reader:
            if len(row) != len(header):
                continue
            row_d: dict = {"path": row[0], "labels": [x for x in row[1].split(";") if x]}
            values = iter(row[2:])
            for key, classes in layout.items():
                row_d[key] = {c: float(v) for c, v in zip(classes, values)}
            yield row_d


def iter_rows(path: Path) -> Iterator[dict]:
    """Rows as dicts ``{"path", "scores": {class: v}, "labels", ["global", "aggregate"]}`` in any format."""
    path = Path(path)
    fmt = output_format(path)
    if fmt == "jsonl":
        yield from _rows_jsonl(path)
    elif fmt == "csv":
        yield from _rows_csv(path)
    else:
        table = read_label_file(path)
        for i, p in enumerate(table.paths):
            row = {"path": p, "scores": dict(zip(table.classes, table.scores[i].tolist()))}
            row.update({k: dict(zip(table.classes, v[i].tolist())) for k, v in table.parts.items()})
            yield row


def read_label_file(path: str | Path) -> LabelTable:
    """Read any label file written by ``cdul-rt label`` (or training's refined labels) into a dense table."""
    path = Path(path)
    if not path.is_file():
        raise CdulError(f"label file {path} not found")
    fmt, meta = output_format(path), read_meta(path)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k].astype(np.float32) for k in PARTS if k in z.files}
            if "meta" in z.files and not meta:
                meta = json.loads(str(z["meta"]))
            return LabelTable([str(p) for p in z["paths"]], [str(c) for c in z["classes"]],
                              z["scores"].astype(np.float32), parts, meta)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        md = t.schema.metadata or {}
        classes = json.loads(md.get(b"cdul_rt.classes", b"[]")) or meta.get("classes", [])
        def dense(col):
            return np.asarray(t.column(col).to_pylist(), dtype=np.float32).reshape(len(t), len(classes))
        parts = {k: dense(k) for k in PARTS if k in t.column_names}
        paths = t.column("path").to_pylist()
        if "path_bytes" in t.column_names:  # exact names that are not valid UTF-8 (see the module docstring)
            paths = [os.fsdecode(b) if b is not None else p for p, b in zip(paths, t.column("path_bytes").to_pylist())]
        return LabelTable(paths, classes, dense("scores"), parts, meta)
    paths, rows, parts_rows = [], [], {k: [] for k in PARTS}
    classes = meta.get("classes")
    for row in iter_rows(path):
        classes = classes or list(row["scores"])
        paths.append(row["path"])
        rows.append([row["scores"][c] for c in classes])
        for k in PARTS:
            if k in row:
                parts_rows[k].append([row[k][c] for c in classes])
    scores = np.asarray(rows, dtype=np.float32).reshape(len(paths), len(classes or []))
    parts = {k: np.asarray(v, dtype=np.float32) for k, v in parts_rows.items() if v and len(v) == len(paths)}
    return LabelTable(paths, list(classes or []), scores, parts, meta)


# -- crash repair -------------------------------------------------------------------------------------------------
def repair_tail(path: Path, fmt: str) -> None:
    """Cut off a partly written last line (left by a crash) so the file is valid again.

    CSV records end at a newline outside quotes (a quoted file name may hold a newline); JSONL lines must parse.
    """
    if not path.is_file():
        return
    size = path.stat().st_size
    with open(path, "rb+") as f:
        data = f.read()
        keep = _csv_record_end(data) if fmt == "csv" else data.rfind(b"\n") + 1
        tail = data[keep:]
        if keep > 0 and fmt == "jsonl":
            # the last newline-terminated line must parse too (a crash can leave a line cut before its newline
            # only, but be strict: drop any trailing line that does not parse)
            start = data.rfind(b"\n", 0, keep - 1) + 1
            try:
                json.loads(data[start:keep])
            except ValueError:
                keep = start
        if tail or keep < size:
            f.truncate(keep)


def _csv_record_end(data: bytes) -> int:
    """Offset just after the last newline that is outside quotes (0 if none): the end of the last whole record.

    ``csv`` quotes any field holding a quote, comma or newline and doubles inner quotes, so a position is inside a
    quoted field exactly when an odd number of quote characters precede it.
    """
    end = data.rfind(b"\n")
    quotes = data.count(b'"', 0, max(end, 0))
    while end >= 0 and quotes % 2:
        prev = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', max(prev, 0), end)
        end = prev
    return end + 1


def done_paths(path: Path, fmt: str) -> set[str]:
    if not path.is_file():
        return set()
    if fmt in ("jsonl", "csv"):
        return {row["path"] for row in iter_rows(path)}
    return set(read_label_file(path).paths)


# -- writing ------------------------------------------------------------------------------------------------------
class LabelWriter:
    """Append rows batch by batch; ``close()`` finalises Parquet / npz. Resumes what a previous run wrote."""

    def __init__(self, path: str | Path, classes: list[str], threshold: float = 0.5, top_k: int | None = None,
                 save_parts: bool = False) -> None:
        self.path = Path(path)
        self.fmt = output_format(self.path)
        self.classes, self.threshold, self.top_k, self.save_parts = list(classes), threshold, top_k, save_parts
        self.journal = self.path if self.fmt in ("jsonl", "csv") else sidecar(self.path, "journal")
        self.journal_fmt = "csv" if self.fmt == "csv" else "jsonl"
        self._file: io.TextIOBase | None = None
        self.written = 0
        self.before_open: Callable[[], None] | None = None  # called once, before the file is first touched

    def existing(self) -> set[str]:
        """Paths already in the output (after repairing a crash-damaged tail)."""
        repair_tail(self.journal, self.journal_fmt)
        done = done_paths(self.journal, self.journal_fmt)
        if self.journal != self.path and self.path.is_file():
            done |= done_paths(self.path, self.fmt)
        return done

    def open(self) -> None:
        """Prepare to write. The file itself is opened on the first batch, so a resumed run with nothing left to
        label does not copy a finished Parquet / npz into a journal only to write it out again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open_file(self) -> io.TextIOBase:
        if self._file is not None:
            return self._file
        if self.before_open is not None:
            self.before_open()
        if self.journal != self.path and self.path.is_file() and not self.journal.is_file():
            # a finished parquet/npz gets more rows: carry its rows into a fresh journal first
            with open(self.journal, "w", encoding="utf-8") as f:
                for row in iter_rows(self.path):
                    f.write(json.dumps(row) + "\n")
        new = not self.journal.is_file() or self.journal.stat().st_size == 0
        # surrogateescape: a file name that is not valid UTF-8 is written as its original bytes (CSV) and read back
        # identically; JSON escapes it (\udcXX) itself
        self._file = open(self.journal, "a", encoding="utf-8", errors="surrogateescape", newline="")
        if new and self.journal_fmt == "csv":
            header = ["path", "labels", *self.classes]
            if self.save_parts:
                header += [f"{k}:{c}" for k in PARTS for c in self.classes]
            csv.writer(self._file).writerow(header)
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
        buf = io.StringIO()
        writer = csv.writer(buf) if self.journal_fmt == "csv" else None
        for i, p in enumerate(paths):
            if not finite[i]:
                continue
            labels = select_labels(final[i], self.classes, self.threshold, self.top_k)
            parts = [s_global[i], s_ag[i]] if self.save_parts else []
            if writer is not None:
                writer.writerow([p, ";".join(labels), *_fmt(final[i]), *(v for part in parts for v in _fmt(part))])
            else:
                row = {"path": p, "scores": dict(zip(self.classes, _fmt(final[i]))), "labels": labels}
                row.update({k: dict(zip(self.classes, _fmt(v))) for k, v in zip(PARTS, parts)})
                buf.write(json.dumps(row, allow_nan=False) + "\n")
        # one write + flush per batch: a crash loses at most the batch in flight, never corrupts earlier rows
        out.write(buf.getvalue())
        out.flush()
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
                (_journal_to_npz if self.fmt == "npz" else _journal_to_parquet)(self.journal, tmp, self.classes,
                                                                                self.save_parts)
            self.journal.unlink()


def _fmt(v: np.ndarray) -> list[float]:
    return [float(x) for x in np.round(v.astype(np.float64), 7)]


def _scan(journal: Path) -> tuple[int, int]:
    n = longest = 0
    for row in _rows_jsonl(journal):
        n += 1
        longest = max(longest, len(row["path"]))
    return n, longest


def _journal_to_npz(journal: Path, out: Path, classes: list[str], save_parts: bool) -> None:
    """Stream the journal into .npy members of a zip (np.load-compatible) without holding all rows."""
    import tempfile
    import zipfile

    n, longest = _scan(journal)
    keys = ["scores", *(PARTS if save_parts else ())]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        arrays = {k: np.lib.format.open_memmap(Path(tmp) / f"{k}.npy", "w+", np.float32, (n, len(classes)))
                  for k in keys}
        paths = np.lib.format.open_memmap(Path(tmp) / "paths.npy", "w+", f"<U{max(longest, 1)}", (n,))
        for i, row in enumerate(_rows_jsonl(journal)):
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


def _is_text(name: str) -> bool:
    """False for a name holding lone surrogates (bytes that were not UTF-8, see ``os.fsdecode``)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """Valid UTF-8 text for a name: undecodable bytes shown as ``\\xNN``."""
    return name if _is_text(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


def _journal_to_parquet(journal: Path, out: Path, classes: list[str], save_parts: bool,
                        rows_per_group: int = 8192) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vec = pa.list_(pa.float32(), len(classes))
    fields = [pa.field("path", pa.string()), pa.field("labels", pa.list_(pa.string())), pa.field("scores", vec)]
    keys = ["scores", *(PARTS if save_parts else ())]
    fields += [pa.field(k, vec) for k in keys[1:]]
    exact = any(not _is_text(row["path"]) for row in _rows_jsonl(journal))
    if exact:
        fields.append(pa.field("path_bytes", pa.binary()))
    schema = pa.schema(fields, metadata={"cdul_rt.classes": json.dumps(classes)})
    with pq.ParquetWriter(out, schema) as writer:
        batch: list[dict] = []

        def flush() -> None:
            cols = {"path": [display_name(r["path"]) for r in batch], "labels": [r.get("labels", []) for r in batch]}
            cols.update({k: [[r[k][c] for c in classes] for r in batch] for k in keys})
            if exact:
                cols["path_bytes"] = [None if _is_text(r["path"]) else os.fsencode(r["path"]) for r in batch]
            writer.write_table(pa.table(cols, schema=schema))
            batch.clear()

        for row in _rows_jsonl(journal):
            batch.append(row)
            if len(batch) >= rows_per_group:
                flush()
        if batch:
            flush()


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
