"""`cdul-rt convert`: each export checked against its tool's schema, and loaded by the tool itself where its Python
package is installed (FiftyOne, pycocotools, label-studio-sdk); COCO also read back by our own `eval` reader."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.labelfile import select_labels, write_label_file
from conftest import make_images

CLASSES = ["cat", "dog", "traffic light", 'a "quoted" <class>']


@pytest.fixture()
def labeled(tmp_path):
    images = tmp_path / "images"
    paths = [p.relative_to(images).as_posix() for p in make_images(images, 6)]
    scores = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    scores[0] = [0.9, 0.8, 0.1, 0.7]
    scores[1] = [0.1, 0.2, 0.3, 0.4]  # no label at 0.5
    meta = {"input": str(images), "version": "0.1.0",
            "config": {"model": "cdul-tiny", "mode": "cdul", "grid": 3, "zeta": 0.3, "lambda": 1.0,
                       "threshold": 0.5, "top_k": None}}
    labels = write_label_file(tmp_path / "labels.jsonl", paths, CLASSES, scores, meta=meta)
    expected = {p: select_labels(s, CLASSES, 0.5, None) for p, s in zip(paths, scores)}
    return labels, images, paths, scores, expected


def convert(*args) -> str:
    result = CliRunner().invoke(main, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_label_studio_tasks_and_config(labeled, tmp_path):
    labels, images, paths, scores, expected = labeled
    out = tmp_path / "ls" / "tasks.json"
    convert(labels, "--to", "label-studio", "--out", out, "--image-root", tmp_path)
    tasks = json.loads(out.read_text())
    config = ET.fromstring(out.with_name("tasks.label_config.xml").read_text())
    choices = config.find("Choices")
    assert choices.get("choice") == "multiple" and config.find("Image").get("value") == "$image"
    assert [c.get("value") for c in choices.findall("Choice")] == CLASSES  # quotes and <> survive the XML
    assert len(tasks) == len(paths)
    for task in tasks:
        path = task["data"]["path"]
        i = paths.index(path)
        # local-files URL relative to the document root, which resolves to the image
        url = task["data"]["image"]
        assert url.startswith("/data/local-files/?d=")
        assert (tmp_path / unquote(url.split("?d=", 1)[1])).resolve() == (images / path).resolve()
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith("cdul-tiny; cdul-rt 0.1.0, mode cdul, grid 3, zeta 0.3")
        result = prediction["result"]
        if not expected[path]:
            assert result == [] and prediction["score"] == 0.0
            continue
        (region,) = result
        assert region["from_name"] == choices.get("name") and region["to_name"] == config.find("Image").get("name")
        assert region["type"] == "choices" and region["value"]["choices"] == expected[path]
        per_label = task["data"]["scores"]
        assert list(per_label) == expected[path]
        assert all(per_label[c] == pytest.approx(scores[i, CLASSES.index(c)], abs=1e-6) for c in per_label)
        assert prediction["score"] == pytest.approx(np.mean(list(per_label.values())))


def test_label_studio_url_prefix_and_errors(labeled, tmp_path):
    labels, _, paths, _, _ = labeled
    out = tmp_path / "tasks.json"
    convert(labels, "--to", "label-studio", "--out", out, "--url-prefix", "https://host/imgs/")
    urls = [t["data"]["image"] for t in json.loads(out.read_text())]
    assert urls == [f"https://host/imgs/{p}" for p in paths]
    result = CliRunner().invoke(main, ["convert", str(labels), "--to", "label-studio", "--out", str(out),
                                       "--image-root", str(tmp_path / "elsewhere")])
    assert result.exit_code == 2 and "is not under --image-root" in result.output
    result = CliRunner().invoke(main, ["convert", str(labels), "--to", "cvat", "--url-prefix", "x"])
    assert result.exit_code == 2 and "label-studio only" in result.output


def test_label_studio_sdk_validates_the_predictions(labeled, tmp_path):
    sdk = pytest.importorskip("label_studio_sdk.label_interface",
                              reason="label-studio-sdk not installed (its numpy pin conflicts with ours)")
    labels, *_ = labeled
    out = tmp_path / "tasks.json"
    convert(labels, "--to", "label-studio", "--out", out, "--url-prefix", "http://x")
    interface = sdk.LabelInterface(out.with_name("tasks.label_config.xml").read_text())
    for task in json.loads(out.read_text()):
        assert all(task["data"].get(o.value_name) for o in interface.objects if o.value_is_variable)
        assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []


def test_cvat_xml_has_image_tags(labeled, tmp_path):
    labels, images, paths, _, expected = labeled
    out = tmp_path / "annotations.xml"
    convert(labels, "--to", "cvat", "--out", out)
    root = ET.parse(out).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("mode") == "annotation" and task.findtext("size") == str(len(paths))
    assert [label.findtext("name") for label in task.findall("labels/label")] == CLASSES
    from PIL import Image

    for image in root.findall("image"):
        name = image.get("name")
        with Image.open(images / name) as im:
            assert (int(image.get("width")), int(image.get("height"))) == im.size
        assert [t.get("label") for t in image.findall("tag")] == expected[name]
    assert sorted(im.get("name") for im in root.findall("image")) == sorted(paths)


def test_fiftyone_dataset_loads_with_confidences(labeled, tmp_path):
    labels, images, paths, scores, expected = labeled
    out = tmp_path / "fo"
    convert(labels, "--to", "fiftyone", "--out", out)
    data = json.loads((out / "labels.json").read_text())
    assert data["classes"] == CLASSES
    importers = pytest.importorskip("fiftyone.utils.data.importers", reason="fiftyone is not installed")
    # the importer `fo.Dataset.from_dir` runs (a Dataset itself needs a MongoDB, which cannot be installed offline)
    importer = importers.FiftyOneImageClassificationDatasetImporter(dataset_dir=str(out), data_path="data.json")
    seen = []
    with importer:
        assert importer.get_dataset_info()["classes"] == CLASSES
        for image_path, _, label in importer:
            rel = Path(image_path).relative_to(images.resolve()).as_posix()
            i = paths.index(rel)
            seen.append(rel)
            got = label.classifications if label is not None else []
            assert [c.label for c in got] == expected[rel]
            for c in got:
                assert c.confidence == pytest.approx(scores[i, CLASSES.index(c.label)], abs=1e-6)
    assert sorted(seen) == sorted(paths)


def test_cvat_xml_loads_in_fiftyones_cvat_importer(labeled, tmp_path):
    labels, images, paths, _, expected = labeled
    out = tmp_path / "annotations.xml"
    convert(labels, "--to", "cvat", "--out", out)
    cvat = pytest.importorskip("fiftyone.utils.cvat", reason="fiftyone is not installed")
    importer = cvat.CVATImageDatasetImporter(data_path=str(images), labels_path=str(out))
    seen = []
    with importer:
        for image_path, metadata, label in importer:
            rel = Path(image_path).relative_to(images.resolve()).as_posix()
            seen.append(rel)
            tags = label["classifications"].classifications if label and "classifications" in label else []
            assert [t.label for t in tags] == expected[rel]
            assert metadata.width > 0 and metadata.height > 0
    assert sorted(seen) == sorted(paths)


def test_coco_json_reads_back(labeled, tmp_path):
    labels, _, paths, scores, expected = labeled
    out = tmp_path / "coco.json"
    convert(labels, "--to", "coco", "--out", out)
    from cdul_rt.groundtruth import read_coco

    entries, classes = read_coco(out)
    assert classes == CLASSES
    assert {k: sorted(v[0]) for k, v in entries.items()} == {p: sorted(e) for p, e in expected.items()}
    data = json.loads(out.read_text())
    assert all(im["width"] > 0 and im["height"] > 0 for im in data["images"])
    coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools is not installed")
    coco = coco_api.COCO(str(out))
    cat = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    dog_images = {coco.imgs[i]["file_name"] for i in coco.getImgIds(catIds=[cat["dog"]])}
    assert dog_images == {p for p, e in expected.items() if "dog" in e}
    anns = coco.loadAnns(coco.getAnnIds())
    assert all(a["score"] == pytest.approx(scores[paths.index(coco.imgs[a["image_id"]]["file_name"]),
                                                  a["category_id"] - 1], abs=1e-6) for a in anns)


def test_threshold_and_top_k_override_the_runs(labeled, tmp_path):
    labels, _, paths, scores, _ = labeled
    out = tmp_path / "coco.json"
    convert(labels, "--to", "coco", "--out", out, "--top-k", "2")
    data = json.loads(out.read_text())
    assert len(data["annotations"]) == 2 * len(paths)
    convert(labels, "--to", "coco", "--out", out, "--threshold", "0.0")
    assert len(json.loads(out.read_text())["annotations"]) == len(paths) * len(CLASSES)


def test_formats_needing_images_say_so(labeled, tmp_path):
    labels, images, _, _, _ = labeled
    images.rename(tmp_path / "moved")
    result = CliRunner().invoke(main, ["convert", str(labels), "--to", "coco"])
    assert result.exit_code == 2 and "pass --images DIR" in result.output
    convert(labels, "--to", "coco", "--images", tmp_path / "moved", "--out", tmp_path / "c.json")


def test_bad_options_and_outputs_are_clear_errors(labeled, tmp_path):
    labels, images, _, _, _ = labeled
    (tmp_path / "a_file").write_text("x")
    cases = [(["--to", "coco", "--threshold", "nan"], "--threshold must be in [0, 1]"),
             (["--to", "coco", "--threshold", "1.5"], "--threshold must be in [0, 1]"),
             (["--to", "coco", "--out", tmp_path], "is a folder; --to coco writes one file"),
             (["--to", "label-studio", "--out", tmp_path], "is a folder; --to label-studio writes one file"),
             (["--to", "fiftyone", "--out", tmp_path / "a_file"], "is a file; --to fiftyone writes a dataset folder"),
             (["--to", "cvat", "--out", tmp_path / "a_file" / "x.xml"], "cannot write")]
    for args, message in cases:
        result = CliRunner().invoke(main, ["convert", str(labels), "--images", str(images), *map(str, args)])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_image_sizes_are_the_displayed_ones_after_exif_rotation(tmp_path):
    from PIL import Image

    from cdul_rt.handoff import load_handoff

    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a 40x30 file is shown (and labeled) as 30x40
    Image.new("RGB", (40, 30)).save(images / "rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 30)).save(images / "plain.jpg")
    labels = write_label_file(tmp_path / "l.jsonl", ["plain.jpg", "rotated.jpg"], ["a"],
                              np.array([[0.9], [0.9]], np.float32))
    assert load_handoff(labels, images).sizes() == [(40, 30), (30, 40)]


def test_non_utf8_file_names_export_to_every_format(tmp_path):
    """`label` keeps an undecodable byte as a lone surrogate (os.fsdecode); every export stays valid UTF-8 and the
    JSON ones give back the very name that opens the file."""
    import os
    import xml.etree.ElementTree as ET

    from PIL import Image

    from cdul_rt.groundtruth import read_coco

    images = tmp_path / "images"
    images.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    Image.new("RGB", (40, 30)).save(images / name)
    labels = write_label_file(tmp_path / "l.jsonl", [name], ["x"], np.array([[0.9]], np.float32),
                              meta={"input": str(images)})
    for fmt in ("coco", "cvat", "fiftyone", "label-studio"):
        convert(labels, "--to", fmt, "--out", tmp_path / fmt)
    assert list(read_coco(tmp_path / "coco")[0]) == [name]
    data = json.loads((tmp_path / "fiftyone" / "data.json").read_text(encoding="utf-8"))
    assert Path(next(iter(data.values()))).is_file()
    (task,) = json.loads((tmp_path / "label-studio").read_text(encoding="utf-8"))
    assert task["data"]["image"] == "/data/local-files/?d=caf%E9.jpg" and task["data"]["path"] == name
    assert ET.parse(tmp_path / "cvat").find("image").get("name") == "caf\\xe9.jpg"
    result = CliRunner().invoke(main, ["report", str(labels), "--out", str(tmp_path / "r.html"), "-q"])
    assert result.exit_code == 0, result.output
    (tmp_path / "r.html").read_text(encoding="utf-8")  # valid UTF-8
