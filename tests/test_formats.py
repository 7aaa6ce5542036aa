"""Issue 11 item 4: output formats are one table of small format objects, used by the label writer, its readers,
resume and repair, `--save-embeddings` and the Ray shards; a new format is one module plus one table line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from cdul_rt import formats
from cdul_rt.distributed.shards import ShardWriter, label_shards, prepare_output
from cdul_rt.embeddings import EmbeddingWriter, embedding_files, read_embeddings
from cdul_rt.errors import CdulError
from cdul_rt.formats import FORMATS, label_format
from cdul_rt.formats.base import Appender, LabelFormat, open_append
from cdul_rt.labelfile import LabelWriter, iter_rows, read_label_file, sidecar

CLASSES = ["cat", "dog", "car"]


def _write(path: Path, paths: list[str], scores: np.ndarray, save_parts: bool = False) -> None:
    w = LabelWriter(path, CLASSES, threshold=0.5, save_parts=save_parts)
    w.open()
    w.write_batch(paths, scores, *((scores * 0.5, scores * 0.25) if save_parts else ()))
    w.close()


def test_the_table_is_keyed_by_each_formats_own_suffix_and_refuses_others(tmp_path):
    assert sorted(FORMATS) == [".csv", ".jsonl", ".npz", ".parquet"]
    assert all(fmt.suffix == suffix and fmt.name == suffix[1:] for suffix, fmt in FORMATS.items())
    assert label_format(tmp_path / "X.PARQUET") is FORMATS[".parquet"]
    with pytest.raises(CdulError, match=r"unknown output format '\.txt'.*\.jsonl, \.csv, \.parquet, \.npz"):
        label_format(tmp_path / "x.txt")
    assert formats.format_named("csv") is FORMATS[".csv"]
    with pytest.raises(CdulError, match="unknown label format 'tsv'"):
        formats.format_named("tsv")


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_every_format_round_trips_rows_and_resumes(tmp_path, suffix):
    fmt, out = FORMATS[suffix], tmp_path / f"l{suffix}"
    s = np.random.default_rng(1).random((4, 3)).astype(np.float32)
    _write(out, ["a.png", "b.png"], s[:2], save_parts=True)
    # appendable formats hold the rows themselves; the others were finalised from a journal that is gone now
    assert not sidecar(out, "journal").exists()
    assert fmt.done_paths(out) == {"a.png", "b.png"}
    _write(out, ["c.png", "d.png"], s[2:], save_parts=True)  # resume: more rows into the same output
    table = fmt.read(out, {})
    assert table.paths == ["a.png", "b.png", "c.png", "d.png"] and table.classes == CLASSES
    np.testing.assert_allclose(table.scores, s, rtol=0, atol=1e-7)  # stored rounded to 7 decimals
    np.testing.assert_allclose(table.parts["aggregate"], s * 0.25, rtol=0, atol=1e-7)
    assert [r["path"] for r in fmt.rows(out)] == table.paths == read_label_file(out).paths


def test_ray_shards_have_the_parquet_formats_schema(tmp_path):
    plain = tmp_path / "l.parquet"
    s = np.random.default_rng(2).random((2, 3)).astype(np.float32)
    _write(plain, ["a.png", "b.png"], s, save_parts=True)
    out = tmp_path / "labels.ray"
    prepare_output(out, overwrite=False)
    w = ShardWriter(out, CLASSES, save_parts=True)
    w.add(["a.png", "b.png"], s, s * 0.5, s * 0.25)
    w.flush()
    import pyarrow.parquet as pq

    assert pq.read_schema(label_shards(out)[0]).equals(pq.read_schema(plain), check_metadata=True)


# -- a format that is not in the package: what adding one takes ---------------------------------------------------
class _TsvAppender(Appender):
    def encode(self, rows: list[dict]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerows([r["path"], *r["scores"].values()] for r in rows)
        return buf.getvalue()


class _Tsv(LabelFormat):
    """Tab-separated: ``path`` then one column per class (a header line names them)."""

    name, suffix, appendable = "tsv", ".tsv", True

    def rows(self, path: Path):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t")
            classes = next(reader)[1:]
            for row in reader:
                yield {"path": row[0], "scores": dict(zip(classes, map(float, row[1:])))}

    def open(self, path: Path, classes: list[str], save_parts: bool) -> Appender:
        f, new = open_append(path)
        if new:
            f.write("\t".join(["path", *classes]) + "\n")
        return _TsvAppender(f, classes)

    def repair(self, path: Path) -> None:
        data = path.read_bytes() if path.is_file() else b""
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def test_a_new_format_is_one_object_in_the_table(tmp_path, monkeypatch):
    """Registering a format object is all the writer, readers, resume, embeddings and Ray need."""
    monkeypatch.setitem(FORMATS, ".tsv", _Tsv())
    out = tmp_path / "l.tsv"
    s = np.random.default_rng(3).random((3, 3)).astype(np.float32)
    _write(out, ["a.png", "b.png"], s[:2])
    with open(out, "ab") as f:
        f.write(b"c.png\t0.1")  # a crash mid-row
    w = LabelWriter(out, CLASSES)
    assert w.existing() == {"a.png", "b.png"}  # the torn row is cut off, the whole ones are done
    w.open()
    w.write_batch(["c.png"], s[2:])
    emb = EmbeddingWriter(out)
    emb.write_batch(["a.png", "b.png", "c.png"], np.eye(3, 4, dtype=np.float32))
    w.close()
    emb.finalize()
    assert out.read_text().splitlines()[0] == "path\tcat\tdog\tcar"
    table = read_label_file(out)
    assert table.paths == ["a.png", "b.png", "c.png"]
    np.testing.assert_allclose(table.scores, s, rtol=0, atol=1e-7)
    assert [r["path"] for r in iter_rows(out)] == table.paths
    paths, saved = read_embeddings(out)  # a format without its own place for them: the .npy beside it
    assert paths == table.paths and embedding_files(out)["npy"].is_file()
    np.testing.assert_array_equal(np.asarray(saved), np.eye(3, 4, dtype=np.float16))
    with pytest.raises(CdulError, match=r"not a \.tsv file"):
        prepare_output(tmp_path / "x.tsv", overwrite=False)  # --cluster ray: shards, not a .tsv file

