"""The distributed job's output directory and sources, without Ray: atomic shards, dedup, resume sets, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from cdul_rt.distributed.shards import (FAILURES_DIR, ShardWriter, done_paths, label_shards, merged_shards,
                                        prepare_output, read_failures, read_shards)
from cdul_rt.distributed.sources import decode_uri, is_url, list_images
from cdul_rt.errors import CdulError
from cdul_rt.labelfile import read_label_file
from cdul_rt.preprocess import PreprocessConfig

from conftest import make_broken, make_images

CLASSES = ["cat", "dog", "car"]


def test_shards_hold_every_row_once_and_read_back_sorted(tmp_path):
    out = tmp_path / "labels.ray"
    prepare_output(out, overwrite=False)
    w = ShardWriter(out, CLASSES, threshold=0.5, save_parts=True, shard_rows=2)
    rng = np.random.default_rng(0)
    s = rng.random((5, 3), dtype=np.float32)
    w.add(["d.jpg", "b.jpg", "a.jpg"], s[:3], s[:3] * 0.5, s[:3] * 0.25)
    w.add(["b.jpg", "c.jpg"], s[3:], s[3:], s[3:])  # b.jpg again (a retried task): dropped
    w.add_failures(["x.png"], ["not an image"])
    w.flush()
    assert w.written == 4 and w.duplicates == 1 and w.failed == 1
    assert len(label_shards(out)) == 2 and not list(out.glob(".*"))
    table = read_shards(out)
    assert table.paths == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"] and table.classes == CLASSES
    np.testing.assert_array_equal(table.scores[3], s[0])
    np.testing.assert_array_equal(table.parts["aggregate"][0], s[2] * 0.25)
    shard = read_label_file(label_shards(out)[0])  # a shard is a plain-label Parquet file
    assert shard.classes == CLASSES and shard.paths == ["d.jpg", "b.jpg", "a.jpg"]
    assert read_failures(out) == [("x.png", "not an image")]
    assert done_paths(out) == ({"a.jpg", "b.jpg", "c.jpg", "d.jpg"}, {"x.png"})
    # a second run names its shards apart from the first
    w2 = ShardWriter(out, CLASSES, save_parts=True, shard_rows=10)
    w2.add(["e.jpg"], s[:1], s[:1], s[:1])
    w2.flush()
    assert len(label_shards(out)) == 3 and len(read_shards(out).paths) == 5


def test_prepare_output_drops_torn_temporaries_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "labels.ray"
    prepare_output(out, overwrite=False)
    w = ShardWriter(out, CLASSES)
    w.add(["a.jpg"], np.zeros((1, 3), np.float32))
    w.flush()
    torn = out / ".part-x-00001.parquet.tmp"
    torn.write_bytes(b"PAR1 half a shard")
    prepare_output(out, overwrite=False)
    assert not torn.exists() and len(label_shards(out)) == 1
    prepare_output(out, overwrite=True)
    assert not label_shards(out) and (out / FAILURES_DIR).is_dir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CdulError, match="not cdul-rt shards"):
        prepare_output(out, overwrite=True)
    assert (out / "notes.txt").exists()
    with pytest.raises(CdulError, match="directory of Parquet shards"):
        prepare_output(tmp_path / "labels.jsonl", overwrite=False)


def test_url_and_path_listings_name_images_alike_and_decode_the_same(tmp_path):
    folder = tmp_path / "images"
    make_images(folder, 5)
    make_broken(folder)
    (folder / ".hidden.jpg").write_bytes(b"x")
    local = list_images(folder)
    remote = list_images(f"file://{folder}")
    assert [p for p, _ in local] == [p for p, _ in remote] and len(local) == 8
    assert is_url(remote[0][1]) and not is_url(local[0][1])
    cfg = PreprocessConfig(size=32)
    for (path, uri_local), (_, uri_remote) in zip(local, remote):
        a, b = decode_uri(uri_local, 2, cfg), decode_uri(uri_remote, 2, cfg)
        assert (a.error is None) == (b.error is None), path
        if a.crops is not None:
            np.testing.assert_array_equal(a.crops, b.crops)
        else:
            assert a.error == b.error
    missing = decode_uri(f"file://{folder}/nope.jpg", 2, cfg)
    assert missing.crops is None and "nope.jpg" in missing.error
    with pytest.raises(CdulError, match="does not exist"):
        list_images(tmp_path / "nowhere")


def test_listing_blocks_keep_every_row_once_and_grow_with_the_listing():
    pytest.importorskip("pyarrow")
    from cdul_rt.distributed.ray_label import MAX_LISTING_BLOCK, listing_blocks

    n = 300_000
    listing = ((f"{i // 1000:03d}/{i:07d}.jpg", f"s3://b/{i:07d}.jpg") for i in range(n))
    skip = {f"{i // 1000:03d}/{i:07d}.jpg" for i in range(0, n, 7)}
    blocks, rows = listing_blocks(listing, skip, 32, lambda table: table)  # put: keep the table itself
    paths = [p for b in blocks for p in b.column("path").to_pylist()]
    assert rows == len(paths) == n - len(skip) and not skip & set(paths)
    assert paths == sorted(paths) and blocks[0].num_rows == 32
    sizes = [b.num_rows for b in blocks[:-1]]
    assert sizes == sorted(sizes) and 900 <= max(sizes) <= MAX_LISTING_BLOCK  # rows so far / 256: few refs
    assert len(blocks) < n / 100


def test_non_utf8_names_keep_their_bytes_in_shards_failures_resume_sets_and_ray_blocks(tmp_path):
    """A name that is not valid UTF-8 (lone surrogates, as ``os.fsdecode`` gives it) is stored as plain ``label``'s
    Parquet stores it (readable ``path`` + exact ``path_bytes``, only in the shards that need it), in label and
    failures shards alike, comes back exact from every reader (local and store resume sets), and travels through
    Ray's Arrow blocks (``pa.string()`` refused it: one such file crashed the whole job)."""
    import os

    import pyarrow.parquet as pq

    from cdul_rt.distributed.ray_label import listing_blocks, shard_blocks
    from cdul_rt.distributed.remote_out import RemoteOutput

    bad, broken = os.fsdecode(b"caf\xe9.png"), os.fsdecode(b"sub/bro\xffken.jpg")
    out = tmp_path / "labels.ray"
    prepare_output(out, overwrite=False)
    w = ShardWriter(out, CLASSES, shard_rows=1)
    s = np.random.default_rng(0).random((3, 3), dtype=np.float32)
    emb = s.astype(np.float16)  # label --save-embeddings: a column after path_bytes in plain label's file
    w.add(["a.jpg"], s[:1], embeddings=emb[:1])  # shard 0: UTF-8 names only
    w.add([bad, "b.jpg"], s[1:], embeddings=emb[1:])  # shard 1
    w.add_failures([broken], [f"cannot read {broken}"])  # a reason may quote the name
    first, second = (pq.read_table(f) for f in label_shards(out))
    assert first.column_names == ["path", "labels", "scores", "embedding"]  # plain label's for UTF-8 names
    assert second.column("path").to_pylist() == ["caf\\xe9.png", "b.jpg"]
    assert second.column("path_bytes").to_pylist() == [b"caf\xe9.png", None]
    assert read_label_file(label_shards(out)[1]).paths == [bad, "b.jpg"]  # still a plain-label Parquet file
    merged = merged_shards(out)  # plain label's column order, though the first shard has no path_bytes
    assert merged.column_names == ["path", "labels", "scores", "path_bytes", "embedding"]
    assert merged.column("path_bytes").to_pylist() == [None, None, b"caf\xe9.png"]
    table = read_shards(out)
    assert table.paths == ["a.jpg", "b.jpg", bad]
    np.testing.assert_array_equal(table.scores, s[[0, 2, 1]])
    assert read_failures(out) == [(broken, "cannot read sub/bro\\xffken.jpg")]
    assert os.fsencode(read_failures(out)[0][0]) == b"sub/bro\xffken.jpg"
    expected = ({"a.jpg", "b.jpg", bad}, {broken})
    assert done_paths(out) == expected == RemoteOutput(f"file://{out}").done_paths()

    blocks, n = listing_blocks([("a.jpg", "/i/a.jpg"), (bad, f"/i/{bad}")], {"a.jpg"}, 32, lambda t: t)
    assert n == 1 and [os.fsdecode(b) for b in blocks[0].column("uri").to_pylist()] == [f"/i/{bad}"]
    assert [os.fsdecode(b) for b in blocks[0].column("path").to_pylist()] == [bad]
    blocks, _ = shard_blocks([("00000.tar", "/s/00000.tar")], {f"00000.tar/{bad}"}, lambda t: t)
    assert [os.fsdecode(k) for k in blocks[0].column("skip").to_pylist()[0]] == [bad]


def test_decode_stage_opens_non_utf8_names_and_returns_arrow_text_reasons(tmp_path):
    """The decode stage gets names as bytes (the Arrow blocks' type) and its reasons go back through Arrow: one that
    quotes a name that is not valid UTF-8 (a failed download names its URL) is readable text."""
    import os

    import pyarrow as pa

    from cdul_rt.distributed.ray_label import decode_batch

    make_images(tmp_path / "src", 1)
    image = next((tmp_path / "src" / "sub").iterdir())
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    with open(raw, "wb") as f:
        f.write(image.read_bytes())
    names = np.empty(2, dtype=object)
    names[:] = [raw, os.fsencode(f"file://{tmp_path}/gone\udce9.jpg")]
    cfg = PreprocessConfig(size=32)
    out = decode_batch({"path": names, "uri": names}, 2, cfg, 10**8)
    assert out["error"][0] == "" and out["path"] is names
    np.testing.assert_array_equal(out["crops"][0], decode_uri(str(image), 2, cfg).crops)
    assert f"cannot read file://{tmp_path}/gone\\xe9.jpg" in out["error"][1]
    pa.array(out["error"], pa.string())  # what Ray does with the column
