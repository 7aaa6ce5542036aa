"""Edge cases found by mutation testing (issue 19): a CSV whose header a crash cut, a foreign Parquet file, and the
wording of an unknown-name error."""

import numpy as np
import pytest

from cdul_rt.errors import CdulError, did_you_mean
from cdul_rt.labelfile import LabelWriter, read_label_file

CLASSES = ["cat", "dog"]


def test_a_csv_whose_header_was_cut_by_a_crash_starts_again_on_resume(tmp_path):
    out = tmp_path / "l.csv"
    out.write_bytes(b"path,lab")  # the first write was cut mid-header: repair leaves 0 bytes
    w = LabelWriter(out, CLASSES)
    assert w.existing() == set()
    w.open()
    w.write_batch(["a.png"], np.array([[0.9, 0.1]], dtype=np.float32))
    w.close()
    t = read_label_file(out)
    assert t.paths == ["a.png"] and t.classes == CLASSES


def test_a_parquet_file_naming_no_classes_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"path": ["a.png"], "labels": [["cat"]], "scores": [[0.9, 0.1]]}), out)
    with pytest.raises(CdulError, match="names no classes"):
        read_label_file(out)


def test_an_unknown_name_without_a_close_match_is_a_sentence_before_the_hint():
    assert str(did_you_mean("zzz", ["cdul", "avg"], "aggregation mode", "Modes: cdul, avg.")) == \
        "unknown aggregation mode 'zzz'. Modes: cdul, avg."
    assert str(did_you_mean("cdl", ["cdul", "avg"], "aggregation mode", "Modes: cdul, avg.")) == \
        "unknown aggregation mode 'cdl'; did you mean 'cdul'? Modes: cdul, avg."
