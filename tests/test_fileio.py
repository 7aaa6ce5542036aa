"""cdul_rt.fileio: the one sha256 and the one temporary-file-and-rename write every writer goes through."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest

from cdul_rt.fileio import atomic_path, atomic_write, sha256_file


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == want == sha256_file(path, chunk=1000) == sha256_file(str(path), chunk=1)
    path.write_bytes(data[:-1])  # changed in place: the plain hash sees it
    assert sha256_file(path) != want


def test_atomic_write_replaces_whole_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "meta.json"
    atomic_write(path, "ä\udcff", errors="surrogateescape")
    assert path.read_bytes() == "ä\udcff".encode("utf-8", "surrogateescape")
    atomic_write(path, b"second", sync=False)
    assert path.read_bytes() == b"second" and os.listdir(path.parent) == ["meta.json"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "labels.parquet"
    path.write_bytes(b"old, complete")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old, complete" and os.listdir(tmp_path) == ["labels.parquet"]
    with pytest.raises(TypeError):  # the same for the all-at-once form
        atomic_write(path, 12345)
    assert path.read_bytes() == b"old, complete" and os.listdir(tmp_path) == ["labels.parquet"]


def test_the_final_path_never_holds_a_half_file(tmp_path):
    """While the writer is busy, ``path`` is absent (or the old file), never the temporary's partial bytes."""
    path = tmp_path / "model.pt"
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        assert not path.exists() and tmp.parent == path.parent and tmp.name.startswith(".model.pt.")
    assert path.read_bytes() == b"half" and not tmp.exists()


def test_path_writers_keep_their_suffix_and_the_file_gets_a_plain_files_mode(tmp_path):
    path = tmp_path / "emb.npy"
    with atomic_path(path, suffix=".partial.npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save appends .npy unless the name ends with it
    assert np.array_equal(np.load(path), np.arange(3)) and os.listdir(tmp_path) == ["emb.npy"]
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "shared.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644  # mkstemp alone would give 0600


def test_a_restrictive_umask_does_not_lock_the_writer_out(tmp_path):
    old = os.umask(0o277)
    try:
        with atomic_path(tmp_path / "x.bin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"ok")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").read_bytes() == b"ok"
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o400
