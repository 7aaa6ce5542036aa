"""A distributed job's output: a directory of Parquet shards, each written atomically, and its failures table.

Layout of ``OUT/`` (a directory; ``OUT.meta.json`` beside it is the same sidecar plain ``label`` writes)::

    OUT/part-<run>-<seq>.parquet            one row per image: path, labels, scores [, global, aggregate]
    OUT/_failures/part-<run>-<seq>.parquet  one row per unreadable image: path, reason

Label shards have the schema of plain ``label``'s ``.parquet`` output (``scores`` a fixed-size list<float32>, the
classes in the schema metadata), so any one shard reads with :func:`cdul_rt.labelfile.read_label_file`, and the
directory reads as one dataset with pyarrow or pandas (they skip ``_``- and ``.``-prefixed names). Names are stored
as plain ``label``'s Parquet stores them (:func:`cdul_rt.formats.parquet.path_columns`): a shard holding a name that
is not valid UTF-8 has a ``path_bytes`` column with its exact bytes (failures shards too). pyarrow and pandas take a
directory's columns from its first file, so they may miss that column; :func:`read_shards` and
:func:`read_failures` read every shard's columns and give the exact names. A shard is
written under a hidden temporary name and renamed into place, so a killed job leaves whole shards only; every run
names its shards with a fresh run id, so a resumed job never overwrites earlier ones.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_path
from cdul_rt.formats import FORMATS, parquet
from cdul_rt.labelfile import LabelTable, display_name, read_meta, select_labels, sidecar

FAILURES_DIR = "_failures"
SHARD_GLOB = "part-*.parquet"


def _is_ours(p: Path) -> bool:
    name = p.name
    return (name.startswith("part-") and name.endswith(".parquet")) or (name.startswith(".part-")
                                                                        and name.endswith(".tmp"))


def label_shards(out: Path) -> list[Path]:
    return sorted(Path(out).glob(SHARD_GLOB))


def failure_shards(out: Path) -> list[Path]:
    return sorted((Path(out) / FAILURES_DIR).glob(SHARD_GLOB))


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready: refuse a file or a foreign non-empty folder, drop torn temporaries, clear on overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CdulError(f"--out {out} is a file; with --cluster ray the output is a directory of Parquet shards "
                        "(e.g. --out labels.ray/)")
    if out.suffix.lower() in FORMATS and FORMATS[out.suffix.lower()] is not parquet.FORMAT:
        raise CdulError(f"--out {out}: with --cluster ray the output is a directory of Parquet shards, not a "
                        f"{out.suffix} file; pass a directory name (e.g. --out {out.with_suffix('')}.ray)")
    fail_dir = out / FAILURES_DIR
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if p.name != FAILURES_DIR and not _is_ours(p)]
        if foreign:
            raise CdulError(f"--out {out} holds files that are not cdul-rt shards ({', '.join(sorted(foreign)[:3])}"
                            "...); choose an empty or new directory")
    for d in (out, fail_dir):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".part-") or (overwrite and _is_ours(p)):
                p.unlink()  # a torn temporary of a killed job, or an old shard on --overwrite
    if overwrite:
        sidecar(out, "meta").unlink(missing_ok=True)
    fail_dir.mkdir(parents=True, exist_ok=True)


def _paths_of(files: list[Path]) -> set[str]:
    done: set[str] = set()
    for f in files:
        done.update(parquet.read_paths(f))
    return done


def done_paths(out: Path) -> tuple[set[str], set[str]]:
    """Paths already labeled and paths already listed as failures by earlier runs into ``out``."""
    return _paths_of(label_shards(out)), _paths_of(failure_shards(out))


def _atomic_write(table, final: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(final, suffix=".tmp") as tmp, open(tmp, "wb") as f:  # ".tmp": _is_ours knows its leftovers
        pq.write_table(table, f)


class ShardWriter:
    """Collects result rows on the driver and writes them as shards of about ``shard_rows`` rows.

    A shard is also written after ``flush_seconds`` without one, so a slow job loses little when killed. Paths seen
    in this run are remembered: a row that arrives twice (a retried task) is written once.
    """

    def __init__(self, out: Path, classes: list[str], threshold: float = 0.5, top_k: int | None = None,
                 save_parts: bool = False, shard_rows: int = 50_000, flush_seconds: float = 60.0) -> None:
        if shard_rows < 1:
            raise CdulError(f"shard_rows (RayOptions) must be >= 1, got {shard_rows}")
        self.out, self.classes = Path(out), list(classes)
        self.threshold, self.top_k, self.save_parts = threshold, top_k, save_parts
        self.shard_rows, self.flush_seconds = shard_rows, flush_seconds
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        # the columns of plain `label`'s .parquet schema; each shard's schema is made when it is written (flush), as
        # it has path_bytes only when one of its names needs it
        self._rows: dict[str, list] = {name: [] for name in parquet.schema(self.classes, save_parts).names}
        self._embeddings: list[np.ndarray] = []  # its width is known from the first rows
        self._fails: dict[str, list] = {"path": [], "reason": []}
        self._seen: set[str] = set()
        self._seq = 0
        self._last = time.monotonic()
        self.written = self.failed = self.duplicates = 0
        self.shards: list[Path] = []
        self.on_shard = None  # called with each shard file once it is whole (remote outputs upload it)

    def add(self, paths, scores: np.ndarray, s_global: np.ndarray | None = None,
            s_ag: np.ndarray | None = None, embeddings: np.ndarray | None = None) -> None:
        """``embeddings``: ``label --save-embeddings``'s rows, stored as an ``embedding`` column (float16)."""
        for i, p in enumerate(paths):
            if p in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(p)
            self._rows["path"].append(p)
            self._rows["labels"].append(select_labels(scores[i], self.classes, self.threshold, self.top_k))
            self._rows["scores"].append(scores[i])
            if self.save_parts:
                self._rows["global"].append(s_global[i])
                self._rows["aggregate"].append(s_ag[i])
            if embeddings is not None:
                self._embeddings.append(embeddings[i])
        self._maybe_flush()

    def add_failures(self, paths, reasons) -> None:
        for p, r in zip(paths, reasons):
            if p in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(p)
            self._fails["path"].append(p)
            self._fails["reason"].append(r)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        pending = len(self._rows["path"]) + len(self._fails["path"])
        if pending >= self.shard_rows or (pending and time.monotonic() - self._last >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        name = f"part-{self.run_id}-{self._seq:05d}.parquet"
        if self._fails["path"]:
            fails = {**parquet.path_columns(self._fails["path"]),
                     "reason": [display_name(r) for r in self._fails["reason"]]}  # a reason may quote a name
            schema = pa.schema([pa.field("path", pa.string()), pa.field("reason", pa.string()),
                                *([pa.field("path_bytes", pa.binary())] if "path_bytes" in fails else [])])
            _atomic_write(pa.table(fails, schema=schema), self.out / FAILURES_DIR / name)
            if self.on_shard is not None:
                self.on_shard(self.out / FAILURES_DIR / name)
            self.failed += len(self._fails["path"])
            self._fails = {"path": [], "reason": []}
        if self._rows["path"]:
            cols = {**parquet.path_columns(self._rows["path"]),
                    "labels": pa.array(self._rows["labels"], pa.list_(pa.string()))}
            cols.update({k: parquet.arrow_vectors(v, len(self.classes)) for k, v in self._rows.items()
                         if k not in ("path", "labels")})
            schema = parquet.schema(self.classes, self.save_parts, exact_paths="path_bytes" in cols)
            if self._embeddings:
                emb, column = np.asarray(self._embeddings), parquet.EMBEDDING_COLUMN
                cols[column] = parquet.arrow_vectors(emb, emb.shape[1], parquet.EMBEDDING_DTYPE)
                schema = schema.append(pa.field(column, cols[column].type))
                self._embeddings = []
            _atomic_write(pa.table(cols, schema=schema), self.out / name)
            if self.on_shard is not None:
                self.on_shard(self.out / name)
            self.written += len(self._rows["path"])
            self.shards.append(self.out / name)
            self._rows = {k: [] for k in self._rows}
        self._seq += 1
        self._last = time.monotonic()


def merged_shards(out: str | Path):
    """The label shards of ``out`` as one arrow table sorted by (exact) path, or None when there are none: the
    table plain ``label --out x.parquet`` writes for the same images (its columns in its order, ``path_bytes``
    when a name needs it), so ``pyarrow.parquet.write_table(merged_shards(DIR), "x.parquet")`` makes that file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = label_shards(Path(out))
    if not files:
        return None
    # "default" promotion: a shard without a name that needs path_bytes has no such column (null there)
    t = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    order = np.argsort(np.asarray(parquet.exact_paths(t), dtype=object), kind="stable")
    columns = parquet.schema([], "global" in t.column_names, "path_bytes" in t.column_names).names
    return t.take(pa.array(order)).select([*columns, *(c for c in t.column_names if c not in columns)])


def read_shards(out: str | Path) -> LabelTable:
    """All label rows of a distributed job's output directory as one table, sorted by (exact) path."""
    out = Path(out)
    t, meta = merged_shards(out), read_meta(out)
    if t is None:
        if not out.is_dir():
            raise CdulError(f"{out} is not a directory of label shards")
        classes = meta.get("classes", [])
        return LabelTable([], classes, np.zeros((0, len(classes)), np.float32), {}, meta)
    return parquet.label_table(t, meta)


def read_failures(out: str | Path) -> list[tuple[str, str]]:
    """``(path, reason)`` of every unreadable image recorded in ``out``, sorted by path."""
    import pyarrow.parquet as pq

    rows: list[tuple[str, str]] = []
    for f in failure_shards(Path(out)):
        t = pq.read_table(f)
        rows.extend(zip(parquet.exact_paths(t), t.column("reason").to_pylist()))
    return sorted(rows)
