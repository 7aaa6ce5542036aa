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



# -- mutation survivors (issue 19 item 4): embeddings stored inside npz and Parquet ---------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_embeddings_inside_the_file_replace_older_ones_and_keep_the_rest(tmp_path, suffix):
    fmt, out = FORMATS[suffix], tmp_path / f"l{suffix}"
    paths = [f"{i}.png" for i in range(5)]
    s = np.random.default_rng(4).random((5, 3)).astype(np.float32)
    if suffix == ".parquet":  # several row groups, so each gets its own slice of the embeddings
        fmt.finalize(lambda: iter([{"path": p, "labels": ["cat"], "scores": dict(zip(CLASSES, map(float, r)))}
                                   for p, r in zip(paths, s)]), out, CLASSES, False, rows_per_group=2)
    else:
        _write(out, paths, s, save_parts=True)
    assert fmt.read_embeddings(out) is None and fmt.read_embeddings(tmp_path / f"missing{suffix}") is None
    before = fmt.read(out, {})
    rng = np.random.default_rng(5)
    for width in (4, 6):  # a second call replaces the first (another width too)
        emb = rng.normal(size=(5, width)).astype(np.float32)
        fmt.add_embeddings(out, paths, emb)
        got_paths, got = fmt.read_embeddings(out)
        assert got_paths == paths and got.dtype == np.float16 and got.shape == (5, width)
        np.testing.assert_array_equal(got, emb.astype(np.float16))
    after = fmt.read(out, {})
    assert after.paths == before.paths and sorted(after.parts) == sorted(before.parts)
    np.testing.assert_array_equal(after.scores, before.scores)
    for k in before.parts:
        np.testing.assert_array_equal(after.parts[k], before.parts[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing left beside it
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        assert pq.ParquetFile(out).num_row_groups == 3
        assert [r["labels"] for r in fmt.rows(out)] == [["cat"]] * 5
    else:
        import zipfile

        with zipfile.ZipFile(out) as z:
            assert sorted(z.namelist()) == sorted(["paths.npy", "classes.npy", "scores.npy", "global.npy",
                                                   "aggregate.npy", "embeddings.npy"])


def test_an_unknown_format_name_lists_the_known_ones():
    with pytest.raises(CdulError) as e:
        formats.format_named("tsv")
    assert str(e.value) == "unknown label format 'tsv'; use one of jsonl, csv, parquet, npz"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_embeddings_beside_a_text_format_keep_exact_names_as_float16_memory_maps(tmp_path, suffix):
    fmt, out = FORMATS[suffix], tmp_path / f"l{suffix}"
    paths = ["caf\u00e9.png", "bad-\udcff.png"]  # non-ASCII, and a name that is not UTF-8 (a surrogate escape)
    emb = np.random.default_rng(6).normal(size=(2, 4))  # float64 in: stored as float16
    fmt.add_embeddings(out, paths, emb)
    got_paths, got = fmt.read_embeddings(out)
    assert got_paths == paths
    assert isinstance(got, np.memmap) and got.dtype == np.float16  # mapped, not read into memory
    np.testing.assert_array_equal(got, emb.astype(np.float16))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{out.name}.embeddings.npy",
                                                          f"{out.name}.embeddings.paths.json"]


def test_a_torn_csv_record_with_an_open_quote_is_cut_at_the_last_whole_record():
    from cdul_rt.formats.csv import record_end

    whole = b'path,labels,cat\na.png,cat,0.9\n"b\nc.png",,0.1\n'
    assert record_end(whole) == len(whole)
    for torn in (b'"d', b'"d.png",ca', b'"d\n', b'"d\ne'):  # a quote opened after the last whole record
        assert record_end(whole + torn) == len(whole)


# -- write_label_file (training's refined pseudo labels) ------------------------------------------------------------
def test_write_label_file_labels_at_the_default_threshold_or_top_k_and_writes_the_meta(tmp_path):
    from cdul_rt.labelfile import read_meta, write_label_file

    s = np.array([[0.6, 0.4, 0.5], [0.1, 0.2, 0.9]], dtype=np.float32)
    out = write_label_file(tmp_path / "l.jsonl", ["a", "b"], CLASSES, s, meta={"run": "x"})
    assert [r["labels"] for r in iter_rows(out)] == [["cat", "car"], ["car"]]  # >= 0.5, highest first
    assert read_meta(out) == {"run": "x", "classes": CLASSES}
    out = write_label_file(tmp_path / "k.jsonl", ["a", "b"], CLASSES, s, top_k=2)
    assert [r["labels"] for r in iter_rows(out)] == [["cat", "car"], ["car", "dog"]]
    assert not sidecar(out, "meta").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_label_file_writes_every_row_once_past_its_batch_size(tmp_path, suffix):
    from cdul_rt.labelfile import write_label_file

    n = 4096 + 5
    paths = [f"{i:05d}.png" for i in range(n)]
    s = np.random.default_rng(7).random((n, 3)).astype(np.float32)
    out = write_label_file(tmp_path / f"l{suffix}", paths, CLASSES, s, parts={"global": s * 0.5, "aggregate": s})
    table = read_label_file(out)
    assert table.paths == paths
    np.testing.assert_allclose(table.scores, s, rtol=0, atol=1e-7)
    np.testing.assert_allclose(table.parts["global"], s * 0.5, rtol=0, atol=1e-7)


# -- reading back what each format holds ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_labels_and_exact_names_survive_every_format(tmp_path, suffix):
    out = tmp_path / f"l{suffix}"
    paths = ["a.png", "b\rc.png", "d\r\ne.png", "f;g,h.png"]  # carriage returns and separators inside names
    s = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4], [0.7, 0.1, 0.8], [0.55, 0.5, 0.95]], dtype=np.float32)
    _write(out, paths, s)
    rows = list(iter_rows(out))
    assert [r["path"] for r in rows] == paths
    if suffix != ".npz":  # dense arrays: npz keeps the scores, not the selected labels
        assert [r["labels"] for r in rows] == [["cat", "dog"], [], ["car", "cat"], ["car", "cat", "dog"]]


def test_csv_rows_of_the_wrong_width_are_skipped_not_the_end(tmp_path):
    out = tmp_path / "l.csv"
    out.write_text("path,labels,cat,dog,car\na.png,cat,0.9,0.1,0.2\nb.png,0.5\nc.png,,0.1,0.2,0.3\n")
    assert [r["path"] for r in FORMATS[".csv"].rows(out)] == ["a.png", "c.png"]


@pytest.mark.parametrize("text", ["", "name,labels,cat\na.png,,0.5\n"])
def test_a_csv_without_the_label_header_is_refused(tmp_path, text):
    out = tmp_path / "l.csv"
    out.write_text(text)
    with pytest.raises(CdulError) as e:
        list(FORMATS[".csv"].rows(out))
    assert str(e.value) == f"{out} is not a cdul-rt label CSV (expected columns path,labels,<classes>...)"


def test_npz_members_are_float32_and_the_meta_comes_back(tmp_path):
    out = tmp_path / "l.npz"
    s = np.random.default_rng(8).random((3, 3)).astype(np.float32)
    _write(out, ["a", "b", "c"], s, save_parts=True)
    with np.load(out) as z:
        assert {k: z[k].dtype for k in ("scores", "global", "aggregate")} == dict.fromkeys(
            ("scores", "global", "aggregate"), np.float32)
    meta = {"classes": CLASSES, "run": 1}
    table = FORMATS[".npz"].read(out, meta)
    assert table.meta == meta and table.scores.dtype == np.float32
    assert {k: v.dtype for k, v in table.parts.items()} == {"global": np.float32, "aggregate": np.float32}


def test_an_older_npz_with_its_meta_inside_is_read_and_a_sidecar_meta_wins(tmp_path):
    import json

    out = tmp_path / "old.npz"
    np.savez(out, paths=np.array(["a", "b"]), classes=np.array(CLASSES), scores=np.zeros((2, 3), np.float64),
             meta=np.array(json.dumps({"classes": CLASSES, "writer": "old"})))
    table = FORMATS[".npz"].read(out, {})
    assert table.meta == {"classes": CLASSES, "writer": "old"} and table.scores.dtype == np.float32
    assert FORMATS[".npz"].read(out, {"writer": "sidecar"}).meta == {"writer": "sidecar"}


def test_an_npz_holding_pickled_objects_is_not_unpickled(tmp_path):
    out = tmp_path / "evil.npz"
    np.savez(out, paths=np.array([object(), "b"], dtype=object), classes=np.array(CLASSES),
             scores=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="allow_pickle"):
        FORMATS[".npz"].read(out, {})


def test_npz_finalises_its_temporary_members_beside_the_output(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # the system temp dir is not used
    out = tmp_path / "l.npz"
    _write(out, ["a"], np.ones((1, 3), np.float32))
    assert read_label_file(out).paths == ["a"] and sorted(p.name for p in tmp_path.iterdir()) == ["l.npz"]


def test_parquet_scores_are_fixed_width_float32_and_classes_fall_back_to_the_meta(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "l.parquet"
    s = np.random.default_rng(9).random((2, 3)).astype(np.float32)
    _write(out, ["a", "b"], s, save_parts=True)
    schema = pq.read_schema(out)
    for column in ("scores", "global", "aggregate"):
        assert schema.field(column).type == pa.list_(pa.float32(), 3)
    meta = {"classes": CLASSES, "run": 2}
    table = FORMATS[".parquet"].read(out, meta)
    assert table.meta == meta and table.scores.dtype == np.float32 and table.parts["global"].dtype == np.float32
    bare = tmp_path / "bare.parquet"  # a table without the classes in its schema (written by another tool)
    pq.write_table(pq.read_table(out).replace_schema_metadata(None), bare)
    table = FORMATS[".parquet"].read(bare, meta)
    assert table.classes == CLASSES and table.meta == meta
    np.testing.assert_allclose(table.scores, s, rtol=0, atol=1e-7)  # stored rounded to 7 decimals


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_text_formats_read_float32_with_the_meta_classes_even_when_empty(tmp_path, suffix):
    out = tmp_path / f"l{suffix}"
    s = np.random.default_rng(10).random((2, 3)).astype(np.float32)
    _write(out, ["a", "b"], s, save_parts=True)
    meta = {"classes": CLASSES, "run": 3}
    table = FORMATS[suffix].read(out, meta)
    assert table.meta == meta and table.scores.dtype == np.float32
    assert {k: v.dtype for k, v in table.parts.items()} == {"global": np.float32, "aggregate": np.float32}
    empty = tmp_path / f"empty{suffix}"
    LabelWriter(empty, CLASSES).close()  # a run that labeled nothing
    table = FORMATS[suffix].read(empty, meta)
    assert table.classes == CLASSES and table.scores.shape == (0, 3) and table.paths == []


def test_parts_held_by_only_some_rows_are_left_out(tmp_path):
    import json

    out = tmp_path / "l.jsonl"
    row = {"path": "a", "labels": [], "scores": {"cat": 0.1, "dog": 0.2, "car": 0.3}}
    out.write_text(json.dumps({**row, "global": row["scores"], "aggregate": row["scores"]}) + "\n"
                   + json.dumps({**row, "path": "b"}) + "\n")
    table = read_label_file(out)
    assert table.paths == ["a", "b"] and table.parts == {}


# -- JSONL: torn tails, blank and broken lines ----------------------------------------------------------------------
@pytest.mark.parametrize("tail,kept", [
    (b'{"path": "c", "sc', 2),  # cut mid-line
    (b'{"path": "c", "sc\n', 2),  # cut, then the newline of the next write landed: the line does not parse
    (b"", 2),  # nothing torn: nothing cut
    (b'{"path": "c", "labels": [], "scores": {}}\n', 3),
])
def test_jsonl_repair_keeps_every_whole_line_and_only_those(tmp_path, tail, kept):
    import json

    lines = [json.dumps({"path": p, "labels": [], "scores": {}}).encode() + b"\n" for p in "ab"]
    out = tmp_path / "l.jsonl"
    out.write_bytes(b"".join(lines) + tail)
    FORMATS[".jsonl"].repair(out)
    assert [r["path"] for r in iter_rows(out)] == ["a", "b", "c"][:kept]
    assert out.read_bytes() == (b"".join(lines) + tail)[:len(b"".join(lines)) + (len(tail) if kept == 3 else 0)]
    only = tmp_path / "only.jsonl"
    only.write_bytes(b'{"path": "a", "sc')  # the very first line torn: an empty file
    FORMATS[".jsonl"].repair(only)
    assert only.read_bytes() == b""


def test_jsonl_reading_skips_blank_lines_and_names_a_broken_one(tmp_path):
    out = tmp_path / "l.jsonl"
    out.write_text('{"path": "a"}\n\n{"path": "b"}\nnot json\n')
    rows = FORMATS[".jsonl"].rows(out)
    assert [next(rows)["path"], next(rows)["path"]] == ["a", "b"]
    with pytest.raises(CdulError) as e:
        next(rows)
    assert str(e.value).startswith(f"{out}:4 is not valid JSON (")


def test_jsonl_never_writes_a_non_finite_number(tmp_path):
    appender = FORMATS[".jsonl"].open(tmp_path / "l.jsonl", CLASSES, False)
    with pytest.raises(ValueError):
        appender.append([{"path": "a", "labels": [], "scores": {"cat": float("nan"), "dog": 0.0, "car": 0.0}}])
    appender.close()
    assert (tmp_path / "l.jsonl").read_bytes() == b""


def test_a_missing_label_file_is_named(tmp_path):
    with pytest.raises(CdulError) as e:
        read_label_file(tmp_path / "none.jsonl")
    assert str(e.value) == f"label file {tmp_path / 'none.jsonl'} not found"


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_rows_in_the_journal_of_a_crashed_resume_count_as_done(tmp_path, suffix):
    out = tmp_path / f"l{suffix}"
    s = np.random.default_rng(11).random((3, 3)).astype(np.float32)
    _write(out, ["a", "b"], s[:2])
    w = LabelWriter(out, CLASSES)
    w.open()
    w.write_batch(["c"], s[2:])  # the finished rows are carried into the journal, then c: and the run dies here
    assert sidecar(out, "journal").is_file()
    assert LabelWriter(out, CLASSES).existing() == {"a", "b", "c"}


# -- LabelWriter and the label-file front -------------------------------------------------------------------------
def test_sidecar_names():
    out = Path("run/l.parquet")
    assert {k: sidecar(out, k).name for k in ("meta", "failures", "journal", "lock")} == {
        "meta": "l.parquet.meta.json", "failures": "l.parquet.failures.jsonl", "journal": "l.parquet.journal.jsonl",
        "lock": "l.parquet.lock"}


def test_tied_scores_keep_the_class_order():
    from cdul_rt.labelfile import select_labels

    classes = [f"c{i}" for i in range(40)]
    scores = np.array([0.5] * 20 + [0.7] * 20, dtype=np.float32)
    assert select_labels(scores, classes, 0.6, None) == classes[20:]
    assert select_labels(scores, classes, 0.0, 25) == classes[20:] + classes[:5]


def test_a_broken_meta_file_is_named_with_what_to_do(tmp_path):
    from cdul_rt.labelfile import read_meta

    out = tmp_path / "l.jsonl"
    sidecar(out, "meta").write_text("{not json")
    with pytest.raises(CdulError) as e:
        read_meta(out)
    assert str(e.value).startswith(f"{sidecar(out, 'meta')} is not valid JSON (")
    assert str(e.value).endswith("); delete it or rerun with --overwrite")


def test_the_writer_labels_at_the_default_threshold_or_top_k_and_counts_what_it_wrote(tmp_path):
    s = np.array([[0.6, 0.4, 0.5], [0.1, 0.2, 0.9], [0.3, 0.8, 0.7]], dtype=np.float32)
    w = LabelWriter(tmp_path / "deep" / "er" / "l.jsonl", CLASSES)  # missing parent folders are made
    w.open()
    assert w.written == 0
    w.write_batch(["a", "b"], s[:2])
    w.write_batch(["c"], s[2:])
    w.close()
    w.close()  # closing twice is harmless
    assert w.written == 3
    assert [r["labels"] for r in iter_rows(w.path)] == [["cat", "car"], ["car"], ["dog", "car"]]
    k = LabelWriter(tmp_path / "k.jsonl", CLASSES, top_k=1)
    k.open()
    k.write_batch(["a", "b", "c"], s)
    k.close()
    assert [r["labels"] for r in iter_rows(k.path)] == [["cat"], ["car"], ["dog"]]


def test_rows_with_a_non_finite_score_or_part_are_refused_and_the_rest_written(tmp_path):
    s = np.random.default_rng(12).random((4, 3)).astype(np.float32)
    g = s.copy()
    g[1, 2] = np.nan  # only a part is broken
    s2 = s.copy()
    s2[2, 0] = np.inf
    w = LabelWriter(tmp_path / "l.jsonl", CLASSES, save_parts=True)
    w.open()
    refused = w.write_batch(["a", "b", "c", "d"], s2, g, s)
    w.close()
    reason = "the model returned non-finite scores (NaN or inf); check --weights and --precision"
    assert refused == [("b", reason), ("c", reason)] and w.written == 2
    assert [r["path"] for r in iter_rows(w.path)] == ["a", "d"]


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_a_resume_with_nothing_to_write_leaves_the_file_alone_and_an_empty_run_leaves_a_file(tmp_path, suffix):
    out = tmp_path / f"l{suffix}"
    _write(out, ["a"], np.ones((1, 3), np.float32))
    before = out.stat()
    w = LabelWriter(out, CLASSES)
    assert w.existing() == {"a"}
    w.open()
    w.close()
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert not sidecar(out, "journal").exists()
    empty = tmp_path / f"empty{suffix}"
    LabelWriter(empty, CLASSES).close()
    assert read_label_file(empty).paths == []


def test_a_finished_file_is_carried_into_the_journal_in_bounded_chunks(tmp_path, monkeypatch):
    from cdul_rt.formats.jsonl import JsonlAppender
    from cdul_rt.labelfile import write_label_file

    n = 8192 + 5
    out = write_label_file(tmp_path / "l.parquet", [f"{i}" for i in range(n)], CLASSES, np.zeros((n, 3), np.float32))
    sizes = []
    append = JsonlAppender.append
    monkeypatch.setattr(JsonlAppender, "append", lambda self, rows: (sizes.append(len(rows)), append(self, rows)))
    w = LabelWriter(out, CLASSES)
    w.open()
    w.write_batch(["new"], np.ones((1, 3), np.float32))
    w.close()
    assert sizes == [8192, 5, 1]  # memory stays flat: the carry never holds the whole file
    assert len(read_label_file(out).paths) == n + 1


def test_embeddings_of_an_npz_holding_pickled_objects_are_not_unpickled(tmp_path):
    out = tmp_path / "evil.npz"
    np.savez(out, paths=np.array([object()], dtype=object), classes=np.array(CLASSES), scores=np.zeros((1, 3)),
             embeddings=np.zeros((1, 2), np.float16))
    with pytest.raises(ValueError, match="allow_pickle"):
        FORMATS[".npz"].read_embeddings(out)


def test_a_torn_csv_record_whose_name_holds_two_newlines_is_cut_whole():
    from cdul_rt.formats.csv import record_end

    whole = b'path,labels,cat\na.png,cat,0.9\n'
    for torn in (b'"d\ne\n', b'"d\ne\n"', b'"d\ne\nf.png",,0.'):
        assert record_end(whole + torn) == len(whole)



def test_an_empty_csv_opened_for_appending_gets_its_header(tmp_path):
    out = tmp_path / "l.csv"
    out.write_bytes(b"")
    appender = FORMATS[".csv"].open(out, CLASSES, False)
    appender.append([{"path": "a", "labels": ["cat"], "scores": dict(zip(CLASSES, (0.9, 0.1, 0.2)))}])
    appender.close()
    assert [r["path"] for r in FORMATS[".csv"].rows(out)] == ["a"]


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_a_format_written_once_cannot_be_opened_for_appending(tmp_path, suffix):
    with pytest.raises(TypeError, match=rf"^\{suffix} files are written once by finalize, not appended to$"):
        FORMATS[suffix].open(tmp_path / f"l{suffix}", CLASSES, False)
