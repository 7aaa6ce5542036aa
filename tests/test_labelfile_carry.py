"""A finished Parquet / npz output that gets more rows (a resume after new images arrived): the rows it already
held keep everything they had, and a crash while they are carried over loses none of them."""

import numpy as np
import pytest

from cdul_rt.labelfile import LabelWriter, read_label_file

CLASSES = ["cat", "dog", "car", "tree"]


def scores(n, seed):
    return np.random.default_rng(seed).random((n, len(CLASSES)), dtype=np.float32)


def write(path, names, s, **kw):
    w = LabelWriter(path, CLASSES, threshold=0.5, save_parts=True, **kw)
    w.open()
    w.write_batch(names, s, s * 0.5, s * 0.25)
    w.close()


def labels_column(path):
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return dict(zip(t.column("path").to_pylist(), t.column("labels").to_pylist()))


def test_rows_carried_into_a_finished_parquet_keep_their_labels(tmp_path):
    first, second = scores(6, 0), scores(4, 1)
    names = [f"a{i}.jpg" for i in range(6)], [f"b{i}.jpg" for i in range(4)]
    write(tmp_path / "two.parquet", names[0], first)
    write(tmp_path / "two.parquet", names[1], second)
    write(tmp_path / "one.parquet", names[0] + names[1], np.concatenate([first, second]))
    two, one = labels_column(tmp_path / "two.parquet"), labels_column(tmp_path / "one.parquet")
    assert sum(map(len, one.values())) > 0  # the threshold selects something, or the comparison is empty
    assert two == one
    a, b = read_label_file(tmp_path / "two.parquet"), read_label_file(tmp_path / "one.parquet")
    assert a.paths == b.paths and np.array_equal(a.scores, b.scores)
    assert all(np.array_equal(a.parts[k], b.parts[k]) for k in b.parts)


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_a_crash_while_carrying_loses_no_finished_row(tmp_path, suffix, monkeypatch):
    from cdul_rt import formats

    out = tmp_path / f"labels{suffix}"
    first = scores(20, 2)
    write(out, [f"a{i}.jpg" for i in range(20)], first)
    fmt = formats.label_format(out)
    real_rows = type(fmt).rows

    def dies_after_five(self, path):
        for i, row in enumerate(real_rows(self, path)):
            if i == 5:
                raise KeyboardInterrupt("killed while carrying")
            yield row

    monkeypatch.setattr(type(fmt), "rows", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        write(out, ["b0.jpg"], scores(1, 3))
    monkeypatch.undo()
    write(out, ["b0.jpg"], scores(1, 3))  # the next run: the same new image again
    table = read_label_file(out)
    assert sorted(table.paths) == sorted([f"a{i}.jpg" for i in range(20)] + ["b0.jpg"])
    np.testing.assert_array_equal(table.scores[:20], np.round(first.astype(np.float64), 7).astype(np.float32))
    assert not list(tmp_path.glob("*.carry"))
