"""Ground-truth readers on small fixture files written here: VOC XML, COCO JSON, CSV (two layouts), JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.groundtruth import load_ground_truth, match_paths
from cdul_rt.metrics import IGNORE

CLASSES = ["cat", "dog", "person"]


def _voc_xml(filename: str, objects: list[tuple[str, int]]) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation><folder>VOC</folder><filename>{filename}</filename>{objs}</annotation>"


def test_voc_folder_with_difficult(tmp_path):
    ann = tmp_path / "voc" / "Annotations"
    ann.mkdir(parents=True)
    (ann / "0001.xml").write_text(_voc_xml("0001.jpg", [("cat", 0), ("dog", 1)]))
    (ann / "0002.xml").write_text(_voc_xml("0002.jpg", [("person", 0), ("person", 1)]))
    (ann / "0003.xml").write_text(_voc_xml("0003.jpg", []))
    gt = load_ground_truth(tmp_path / "voc", ["JPEGImages/0002.jpg", "JPEGImages/0001.jpg"], CLASSES)
    assert gt.source_kind == "voc"
    # dog only difficult -> ignored; person difficult and not difficult -> positive
    np.testing.assert_array_equal(gt.targets, [[0, 0, 1], [1, IGNORE, 0]])
    assert gt.unused_images == 1


def test_coco_json(tmp_path):
    data = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 1},
            {"id": 3, "image_id": 9, "category_id": 1, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"},
                       {"id": 4, "name": "car"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    gt = load_ground_truth(path, ["sub/b.jpg", "sub/a.jpg"], CLASSES)
    np.testing.assert_array_equal(gt.targets, [[1, 0, 0], [0, 0, 1]])
    assert gt.source_kind == "coco"


def test_jsonl_label_sets(tmp_path):
    path = tmp_path / "gt.jsonl"
    path.write_text('{"path": "x/1.png", "labels": ["dog", "cat"]}\n\n{"path": "x/2.png", "labels": []}\n')
    gt = load_ground_truth(path, ["x/2.png", "x/1.png"], CLASSES)
    np.testing.assert_array_equal(gt.targets, [[0, 0, 0], [1, 1, 0]])


def test_csv_label_column_and_wide_layout(tmp_path):
    sets = tmp_path / "sets.csv"
    sets.write_text('path,labels\n1.png,cat;person\n2.png,"dog|cat"\n3.png,\n')
    gt = load_ground_truth(sets, ["1.png", "2.png", "3.png"], CLASSES)
    np.testing.assert_array_equal(gt.targets, [[1, 0, 1], [1, 1, 0], [0, 0, 0]])
    wide = tmp_path / "wide.csv"
    wide.write_text("path,cat,dog,person\n1.png,1,0,1\n2.png,0,1,0\n")
    gt = load_ground_truth(wide, ["2.png", "1.png"], CLASSES)
    np.testing.assert_array_equal(gt.targets, [[0, 1, 0], [1, 0, 1]])


def test_mismatches_give_clear_errors(tmp_path):
    path = tmp_path / "gt.jsonl"
    path.write_text('{"path": "a/1.png", "labels": ["cat"]}\n{"path": "b/1.png", "labels": ["horse"]}\n')
    with pytest.raises(CdulError, match="no ground truth"):
        load_ground_truth(path, ["a/1.png", "zzz.png"], CLASSES)
    with pytest.raises(CdulError, match="several ground-truth images"):
        load_ground_truth(path, ["c/1.png"], CLASSES)  # file name matches a/1.png and b/1.png
    with pytest.raises(CdulError, match="horse"):
        load_ground_truth(path, ["b/1.png"], CLASSES)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "a.png"}\n')
    with pytest.raises(CdulError, match="bad.jsonl:1"):
        load_ground_truth(bad, ["a.png"], CLASSES)
    with pytest.raises(CdulError, match="unknown ground-truth format"):
        (tmp_path / "gt.txt").write_text("")
        load_ground_truth(tmp_path / "gt.txt", ["a.png"], CLASSES)


def test_match_prefers_exact_then_name_then_stem():
    keys = ["train/1.jpg", "val/1.jpg", "2.jpg"]
    assert match_paths(["train/1.jpg", "2.png", "x/2.jpg"], keys) == ["train/1.jpg", "2.jpg", "2.jpg"]
