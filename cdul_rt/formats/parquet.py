"""Parquet: one row per image (``path``, ``labels``, ``scores`` [, ``global``, ``aggregate``] as fixed-size
float32 lists, the classes in the schema metadata), finalised from a JSONL journal in row groups (memory stays
flat). ``label --cluster ray``'s shards use the same :func:`schema`, so a shard reads as a plain label file.

A name that is not valid UTF-8 has a readable ``path`` (bad bytes shown as ``\\xNN``) plus a binary ``path_bytes``
column holding the exact name (present only when needed; :func:`path_columns`, :func:`exact_paths`).
``label --save-embeddings`` adds an ``embedding`` column (fixed-size list of float16).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_path
from cdul_rt.formats.base import (EMBEDDING_DTYPE, PARTS, LabelFormat, LabelTable, display_name, is_text,
                                  table_rows)

CLASSES_KEY = b"cdul_rt.classes"
EMBEDDING_COLUMN = "embedding"


def schema(classes: list[str], save_parts: bool, exact_paths: bool = False):
    """The label table's arrow schema; ``exact_paths`` adds the ``path_bytes`` column."""
    import pyarrow as pa

    vec = pa.list_(pa.float32(), len(classes))
    fields = [pa.field("path", pa.string()), pa.field("labels", pa.list_(pa.string())), pa.field("scores", vec)]
    fields += [pa.field(k, vec) for k in (PARTS if save_parts else ())]
    if exact_paths:
        fields.append(pa.field("path_bytes", pa.binary()))
    return pa.schema(fields, metadata={CLASSES_KEY.decode(): json.dumps(classes)})


def classes_of(table, meta: dict) -> list[str]:
    """The classes named in an arrow table's schema metadata, else the run's meta."""
    return json.loads((table.schema.metadata or {}).get(CLASSES_KEY, b"[]")) or meta.get("classes", [])


def label_table(t, meta: dict) -> LabelTable:
    """An arrow label table (one file, or several shards concatenated) as a :class:`LabelTable`."""
    classes = classes_of(t, meta)
    if not classes and len(t):
        raise CdulError("a Parquet label file whose schema names no classes (metadata key 'cdul_rt.classes') and "
                        "without its .meta.json: write it with cdul-rt (label, convert), or keep the .meta.json "
                        "beside it")

    def dense(col: str) -> np.ndarray:
        return t.column(col).combine_chunks().flatten().to_numpy().astype(np.float32).reshape(len(t), len(classes))

    parts = {k: dense(k) for k in PARTS if k in t.column_names}
    return LabelTable(exact_paths(t), classes, dense("scores"), parts, meta)


def path_columns(paths: list[str], exact: bool | None = None) -> dict[str, list]:
    """The ``path`` column of ``paths`` (readable text) and, with ``exact``, the ``path_bytes`` column (a name's
    exact bytes where it is not valid UTF-8, else null): how every Parquet file of cdul-rt stores names.
    ``exact=None``: only when one of ``paths`` needs it."""
    if exact is None:
        exact = not all(is_text(p) for p in paths)
    cols: dict[str, list] = {"path": [display_name(p) for p in paths]}
    if exact:
        cols["path_bytes"] = [None if is_text(p) else os.fsencode(p) for p in paths]
    return cols


def exact_paths(t) -> list[str]:
    """The names of an arrow table holding ``path`` [and ``path_bytes``], exact: the inverse of
    :func:`path_columns`."""
    paths = t.column("path").to_pylist()
    if "path_bytes" in t.column_names:
        paths = [os.fsdecode(b) if b is not None else p for p, b in zip(paths, t.column("path_bytes").to_pylist())]
    return paths


def read_paths(source, filesystem=None) -> list[str]:
    """The exact names in a Parquet file (a label file or shard, a failures shard), reading only the name columns
    (on an object store: byte ranges of those columns)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(source, filesystem=filesystem) as f:
        return exact_paths(f.read(columns=[c for c in ("path", "path_bytes") if c in f.schema_arrow.names]))


def arrow_vectors(rows, width: int, dtype=np.float32):
    """``[N, width]`` rows (an array or a list of vectors) -> a pyarrow fixed-size-list<dtype, width> array."""
    import pyarrow as pa

    flat = np.ascontiguousarray(rows, dtype=dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.from_numpy_dtype(np.dtype(dtype))), width)


class Parquet(LabelFormat):
    name, suffix, appendable = "parquet", ".parquet", False

    def read(self, path: Path, meta: dict) -> LabelTable:
        import pyarrow.parquet as pq

        return label_table(pq.read_table(path), meta)

    def rows(self, path: Path) -> Iterator[dict]:
        """The rows with their ``labels`` (a table holds scores only; a finished file that gets more rows keeps
        the labels its first run selected)."""
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        labels = table.column("labels").to_pylist()
        for row, chosen in zip(table_rows(label_table(table, {})), labels):
            yield {"path": row["path"], "labels": chosen or [], **{k: v for k, v in row.items() if k != "path"}}

    def done_paths(self, path: Path) -> set[str]:
        return set(read_paths(path))

    def finalize(self, rows: Callable[[], Iterator[dict]], out: Path, classes: list[str], save_parts: bool,
                 rows_per_group: int = 8192) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = ["scores", *(PARTS if save_parts else ())]
        exact = any(not is_text(row["path"]) for row in rows())  # one schema for every row group
        table_schema = schema(classes, save_parts, exact)
        with pq.ParquetWriter(out, table_schema) as writer:
            batch: list[dict] = []

            def flush() -> None:
                cols = {**path_columns([r["path"] for r in batch], exact),
                        "labels": [r.get("labels", []) for r in batch]}
                cols.update({k: [[r[k][c] for c in classes] for r in batch] for k in keys})
                writer.write_table(pa.table(cols, schema=table_schema))
                batch.clear()

            for row in rows():
                batch.append(row)
                if len(batch) >= rows_per_group:
                    flush()
            if batch:
                flush()

    def add_embeddings(self, out: Path, paths: list[str], emb: np.ndarray) -> None:
        """Rewrite ``out`` row group by row group with an ``embedding`` column (replacing an older one)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        source = pq.ParquetFile(out)
        out_schema = source.schema_arrow
        if EMBEDDING_COLUMN in out_schema.names:
            out_schema = out_schema.remove(out_schema.get_field_index(EMBEDDING_COLUMN))
        out_schema = out_schema.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.float16(), emb.shape[1])))
        start = 0
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, out_schema) as writer:
            for i in range(source.num_row_groups):
                table = source.read_row_group(i)
                if EMBEDDING_COLUMN in table.column_names:
                    table = table.drop_columns([EMBEDDING_COLUMN])
                column = arrow_vectors(emb[start:start + len(table)], emb.shape[1], EMBEDDING_DTYPE)
                writer.write_table(table.append_column(EMBEDDING_COLUMN, column).cast(out_schema))
                start += len(table)

    def read_embeddings(self, out: Path) -> tuple[list[str], np.ndarray] | None:
        import pyarrow.parquet as pq

        if not out.is_file():
            return None
        with pq.ParquetFile(out) as f:
            names = f.schema_arrow.names
            if EMBEDDING_COLUMN not in names:
                return None
            return embedding_column(f.read(columns=[c for c in ("path", "path_bytes", EMBEDDING_COLUMN)
                                                    if c in names]))


def embedding_column(table) -> tuple[list[str], np.ndarray]:
    """``(exact paths, float16 [N, D])`` of an arrow table holding ``path`` [, ``path_bytes``] and ``embedding``."""
    col = table.column(EMBEDDING_COLUMN).combine_chunks()
    return (exact_paths(table),
            col.flatten().to_numpy(zero_copy_only=False).astype(EMBEDDING_DTYPE).reshape(-1, col.type.list_size))


FORMAT = Parquet()
