"""Issue 13: nothing lost, nothing silently wrong (label files, resume semantics, bad numbers, eval, artifacts).

Each test names the issue item it covers; each was run against the code before its fix and failed there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.labelfile import LabelWriter, read_label_file, repair_tail

from conftest import make_images

FORMATS = ("jsonl", "csv", "parquet", "npz")


def label_args(folder: Path, out: Path, tiny_config: Path, *extra: str) -> list[str]:
    return ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
            "--out", str(out), "-q", "--workers", "0", *extra]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _bytes_name(folder: Path, raw: bytes, like: Path) -> str:
    """Copy ``like`` to a file whose name is the raw bytes ``raw``; returns the name as Python sees it."""
    target = os.fsencode(folder) + b"/" + raw
    with open(target, "wb") as f:
        f.write(like.read_bytes())
    return os.fsdecode(raw)


# -- item 1: file names that are not valid UTF-8, in every format, with a resume --------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_non_utf8_file_names_in_every_format_and_resume(tmp_path, tiny_config, fmt):
    folder = tmp_path / "images"
    paths = make_images(folder, 5)
    bad = _bytes_name(folder, b"bad\xff\xfename.png", paths[1])
    out = tmp_path / f"labels.{fmt}"
    r = invoke(*label_args(folder, out, tiny_config))
    assert r.exit_code == 0, r.output
    table = read_label_file(out)
    assert len(table.paths) == 6 and bad in table.paths
    assert os.fsencode(bad) == b"bad\xff\xfename.png"  # the exact bytes come back
    make_images(folder / "more", 2, seed=3)
    r = invoke(*label_args(folder, out, tiny_config))
    assert r.exit_code == 0, r.output
    assert "6 already done" in r.output
    table = read_label_file(out)
    assert sorted(table.paths) == sorted(set(table.paths)) and len(table.paths) == 8


# -- item 2: CSV crash repair with a newline inside a quoted file name ---------------------------------------------
def test_csv_repair_keeps_quoted_newlines(tmp_path):
    out = tmp_path / "l.csv"
    w = LabelWriter(out, ["a", "b"])
    w.open()
    w.write_batch(["one.png", "two\nlines.png", "three.png"], np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]))
    w.close()
    data = out.read_bytes()
    cut = data.index(b"two\n") + 4  # a crash right after the newline inside the quoted name
    out.write_bytes(data[:cut])
    repair_tail(out, "csv")
    assert out.read_bytes() == data[: data.index(b'"two')]  # cut before the torn record, not inside it
    assert read_label_file(out).paths == ["one.png"]
    out.write_bytes(data)
    repair_tail(out, "csv")
    assert out.read_bytes() == data  # a whole file is left alone


def test_csv_resume_after_torn_quoted_newline(tmp_path, tiny_config):
    folder = tmp_path / "images"
    paths = make_images(folder, 6)
    os.rename(paths[2], folder / "new\nline.png")
    out = tmp_path / "l.csv"
    assert invoke(*label_args(folder, out, tiny_config, "--batch-size", "2")).exit_code == 0
    full = read_label_file(out)
    data = out.read_bytes()
    out.write_bytes(data[: data.index(b"new\n") + 4])
    r = invoke(*label_args(folder, out, tiny_config, "--batch-size", "2"))
    assert r.exit_code == 0, r.output
    again = read_label_file(out)
    assert sorted(again.paths) == sorted(full.paths) and len(again.paths) == 6
    order = [again.paths.index(p) for p in full.paths]
    np.testing.assert_allclose(again.scores[order], full.scores, rtol=0, atol=1e-6)


# -- item 7: non-finite scores never become rows ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_non_finite_scores_are_refused_not_written(tmp_path, fmt):
    out = tmp_path / f"n.{fmt}"
    w = LabelWriter(out, ["a", "b"])
    w.open()
    refused = w.write_batch(["ok.png", "nan.png", "inf.png"],
                            np.array([[0.1, 0.9], [np.nan, 0.5], [np.inf, 0.2]], dtype=np.float32))
    w.close()
    assert [p for p, _ in refused] == ["nan.png", "inf.png"] and "non-finite" in refused[0][1]
    table = read_label_file(out)
    assert table.paths == ["ok.png"] and np.isfinite(table.scores).all()
    if fmt == "jsonl":
        json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


# -- item 6: float and 16-bit images scaled by the type's range, never by content ------------------------------------
def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    from PIL import Image

    from cdul_rt.imageio import open_rgb

    a = np.full((8, 8), 0.5, dtype=np.float32)
    a[0, 0] = 1.0
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    out = np.asarray(open_rgb(tmp_path / "f.tif"))
    assert out[0, 0, 0] == 255 and 127 <= out[4, 4, 0] <= 128


def test_sixteen_bit_scale_does_not_depend_on_content(tmp_path):
    from PIL import Image

    from cdul_rt.imageio import open_rgb

    dark = np.full((8, 8), 200, dtype=np.uint16)  # a very dark 16-bit image (200 / 65535)
    with_white = dark.copy()
    with_white[0, 0] = 65535
    Image.fromarray(dark).save(tmp_path / "dark.png")
    Image.fromarray(with_white).save(tmp_path / "white.png")
    a, b = np.asarray(open_rgb(tmp_path / "dark.png")), np.asarray(open_rgb(tmp_path / "white.png"))
    assert a[4, 4, 0] == b[4, 4, 0] == 1  # 200/65535*255, whatever else the image holds
    assert b[0, 0, 0] == 255


# -- items 7 and 12: non-finite or out-of-range numbers refused up front ----------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--lam", "nan"], "--lam must be a finite number"),
    (["--lam", "inf"], "--lam must be a finite number"),
    (["--zeta", "nan"], "--zeta must be in [0, 1]"),
    (["--threshold", "2"], "--threshold must be in [0, 1]"),
    (["--threshold", "nan"], "--threshold must be in [0, 1]"),
    (["--max-pixels", "-5"], "--max-pixels must be >= 1"),
])
def test_bad_numbers_are_refused(tmp_path, image_folder, args, message):
    out = tmp_path / "o.jsonl"
    r = invoke("label", str(image_folder), "--pretrained", "none", "-q", "--out", str(out), *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


# -- items 7 and 11: eval --------------------------------------------------------------------------------------------
def _gt(tmp_path, rows: dict) -> Path:
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"path": p, "labels": labels}) + "\n" for p, labels in rows.items()))
    return gt


def _pred_jsonl(tmp_path, rows: list[tuple[str, dict]]) -> Path:
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"path": p, "scores": s, "labels": []}) + "\n" for p, s in rows))
    return pred


def test_eval_warns_on_nan_scores(tmp_path):
    pred = _pred_jsonl(tmp_path, [("a.jpg", {"x": 0.9, "y": float("nan")}), ("b.jpg", {"x": 0.1, "y": 0.8}),
                                  ("c.jpg", {"x": 0.2, "y": 0.3})])
    gt = _gt(tmp_path, {"a.jpg": ["x", "y"], "b.jpg": [], "c.jpg": ["y"]})
    r = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--json"])
    assert r.exit_code == 0, r.output
    assert "NaN" in r.stderr and "a.jpg" in r.stderr
    ap = json.loads(r.stdout)["per_class_AP"]
    assert ap["y"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)  # NaN ranks lowest: order b (neg), c, a


def test_eval_refuses_duplicate_rows_and_empty_files(tmp_path):
    gt = _gt(tmp_path, {"a.jpg": ["x"], "b.jpg": []})
    pred = _pred_jsonl(tmp_path, [("a.jpg", {"x": 0.9}), ("b.jpg", {"x": 0.1}), ("b.jpg", {"x": 0.95})])
    r = invoke("eval", "--pred", str(pred), "--gt", str(gt))
    assert r.exit_code == 2 and "more than one row" in r.output and "b.jpg" in r.output
    pred.write_text("")
    r = invoke("eval", "--pred", str(pred), "--gt", str(gt))
    assert r.exit_code == 2 and "holds no rows" in r.output


@pytest.mark.parametrize("save_parts", [False, True])
def test_eval_csv_with_colon_in_class_names(tmp_path, save_parts):
    from cdul_rt.labelfile import write_label_file

    classes = ["a:b", "c"]
    scores = np.array([[0.9, 0.2], [0.1, 0.7]], dtype=np.float32)
    parts = {"global": scores, "aggregate": scores} if save_parts else None
    pred = write_label_file(tmp_path / "p.csv", ["1.jpg", "2.jpg"], classes, scores, parts=parts)
    table = read_label_file(pred)
    assert table.classes == classes and sorted(table.parts) == (sorted(parts) if parts else [])
    gt = _gt(tmp_path, {"1.jpg": ["a:b"], "2.jpg": ["c"]})
    r = invoke("eval", "--pred", str(pred), "--gt", str(gt), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["per_class_AP"] == {"a:b": 1.0, "c": 1.0}


def test_ground_truth_labels_as_a_string_are_names_not_letters(tmp_path):
    from cdul_rt.groundtruth import read_jsonl

    gt = _gt(tmp_path, {"1.jpg": "cat", "2.jpg": "cat;dog", "3.jpg": ["dog"]})
    assert read_jsonl(gt) == {"1.jpg": ({"cat"}, set()), "2.jpg": ({"cat", "dog"}, set()),
                              "3.jpg": ({"dog"}, set())}


# -- item 3: one folder, one configuration, one writer per output ---------------------------------------------------
def test_another_folder_into_the_same_out_is_refused(tmp_path, tiny_config):
    a, b = tmp_path / "a", tmp_path / "b"
    make_images(a, 4, seed=1)
    make_images(b, 4, seed=2)  # same relative names, other pixels
    out = tmp_path / "l.jsonl"
    assert invoke(*label_args(a, out, tiny_config)).exit_code == 0
    before = out.read_bytes()
    r = invoke(*label_args(b, out, tiny_config))
    assert r.exit_code == 2 and "holds labels of" in r.output and str(a.resolve()) in r.output, r.output
    assert out.read_bytes() == before
    assert json.loads((tmp_path / "l.jsonl.meta.json").read_text())["input_resolved"] == str(a.resolve())


def test_a_second_concurrent_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, image_folder, tiny_config):
    from cdul_rt.runmeta import OutputLock

    out = tmp_path / "l.jsonl"
    with OutputLock(out):  # another run holds the output
        r = invoke(*label_args(image_folder, out, tiny_config))
        assert r.exit_code == 2 and "another cdul-rt label" in r.output and f"pid {os.getpid()}" in r.output
        assert not out.exists()
    # a lock file left by a process killed with -9 (no flock held any more) does not block
    (tmp_path / "l.jsonl.lock").write_text("999999\n")
    r = invoke(*label_args(image_folder, out, tiny_config))
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 12 and not (tmp_path / "l.jsonl.lock").exists()


def test_deleted_meta_then_other_options_is_refused(tmp_path, image_folder, tiny_config):
    out = tmp_path / "l.jsonl"
    assert invoke(*label_args(image_folder, out, tiny_config, "--batch-size", "4")).exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]))  # an interrupted run...
    (tmp_path / "l.jsonl.meta.json").unlink()  # ...whose record was deleted
    r = invoke(*label_args(image_folder, out, tiny_config, "--zeta", "0.1"))
    assert r.exit_code == 2 and "has no l.jsonl.meta.json" in r.output, r.output
    assert out.read_text() == "".join(lines[:5])


def test_unrelated_jsonl_as_out_is_refused(tmp_path, image_folder, tiny_config):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"event": "deploy", "ok": true}\n')
    r = invoke(*label_args(image_folder, out, tiny_config))
    assert r.exit_code == 2 and "not made by cdul-rt label" in r.output, r.output
    assert out.read_text() == '{"event": "deploy", "ok": true}\n'


# -- item 4: --overwrite destroys nothing until the new run has a batch ---------------------------------------------
def test_overwrite_that_fails_before_its_first_batch_keeps_the_old_result(tmp_path, image_folder, tiny_config):
    from conftest import make_broken

    make_broken(image_folder)
    out = tmp_path / "l.jsonl"
    assert invoke(*label_args(image_folder, out, tiny_config)).exit_code == 0
    kept = {p: p.read_bytes() for p in tmp_path.glob("l.jsonl*")}
    assert len(kept) == 3  # output, meta, failures
    bad_weights = tmp_path / "bad.pt"
    bad_weights.write_bytes(b"not a checkpoint")
    r = invoke(*label_args(image_folder, out, tiny_config, "--weights", str(bad_weights), "--overwrite"))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert {p: p.read_bytes() for p in tmp_path.glob("l.jsonl*")} == kept
    r = invoke(*label_args(image_folder, out, tiny_config, "--zeta", "0.1", "--overwrite"))
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == 12
    assert json.loads((tmp_path / "l.jsonl.meta.json").read_text())["config"]["zeta"] == 0.1


# -- item 5: failed files are retried on every re-run; the failures file has each still-failing file once -------------
def test_failed_files_are_retried_and_listed_once(tmp_path, tiny_config):
    from conftest import make_broken

    folder = tmp_path / "images"
    good = make_images(folder, 4)
    make_broken(folder)
    out = tmp_path / "l.jsonl"
    failures = tmp_path / "l.jsonl.failures.jsonl"

    def failed() -> list[str]:
        return [json.loads(line)["path"] for line in failures.read_text().splitlines()]

    assert invoke(*label_args(folder, out, tiny_config)).exit_code == 0
    assert sorted(failed()) == ["broken_empty.png", "broken_text.jpg", "broken_truncated.jpg"]
    r = invoke(*label_args(folder, out, tiny_config))  # nothing fixed: same failures, once each
    assert "4 already done" in r.output and sorted(failed()) == sorted(set(failed())) and len(failed()) == 3
    (folder / "broken_truncated.jpg").write_bytes(good[0].read_bytes())  # fix one, delete another
    (folder / "broken_text.jpg").unlink()
    r = invoke(*label_args(folder, out, tiny_config))
    assert r.exit_code == 0 and "labeled 1 images" in r.output, r.output
    assert failed() == ["broken_empty.png"]
    assert len(out.read_text().splitlines()) == 5


def test_raised_max_pixels_labels_the_refused_images(tmp_path, image_folder, tiny_config):
    out = tmp_path / "l.jsonl"
    r = invoke(*label_args(image_folder, out, tiny_config, "--max-pixels", "2000"))
    assert r.exit_code == 0 and len(out.read_text().splitlines()) < 12
    r = invoke(*label_args(image_folder, out, tiny_config))
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == 12
    assert (tmp_path / "l.jsonl.failures.jsonl").read_text() == ""


# -- item 10: output paths and I/O errors give clear messages, nothing lost -----------------------------------------------
def test_out_in_a_missing_folder_is_created(tmp_path, image_folder, tiny_config):
    out = tmp_path / "new" / "deeper" / "l.parquet"
    r = invoke(*label_args(image_folder, out, tiny_config))
    assert r.exit_code == 0, r.output
    assert len(read_label_file(out).paths) == 12


def test_out_that_is_a_directory_is_refused(tmp_path, image_folder, tiny_config):
    out = tmp_path / "dir.jsonl"
    out.mkdir()
    r = invoke(*label_args(image_folder, out, tiny_config))
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output


def test_read_only_output_gives_a_clear_error(tmp_path, image_folder, tiny_config, monkeypatch):
    import errno

    import cdul_rt.runmeta as runmeta

    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runmeta, "write_meta", read_only)
    r = invoke(*label_args(image_folder, tmp_path / "l.jsonl", tiny_config))
    assert r.exit_code == 2 and "cannot write" in r.output and "Read-only file system" in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_full_mid_run_keeps_rows_and_resumes(tmp_path, image_folder, tiny_config, monkeypatch, fmt):
    import errno

    out = tmp_path / f"l.{fmt}"
    clean = tmp_path / f"clean.{fmt}"
    assert invoke(*label_args(image_folder, clean, tiny_config, "--batch-size", "4")).exit_code == 0
    real = LabelWriter.write_batch
    calls = []

    def filling(self, paths, *arrays):
        calls.append(len(paths))
        if len(calls) == 2:  # half of this batch reaches the disk, then the disk is full
            real(self, paths[:2], *(a[:2] for a in arrays))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, paths, *arrays)

    monkeypatch.setattr(LabelWriter, "write_batch", filling)
    r = invoke(*label_args(image_folder, out, tiny_config, "--batch-size", "4"))
    assert r.exit_code == 2 and "no space left" in r.output and "re-run the same command" in r.output, r.output
    assert "Traceback" not in r.output
    monkeypatch.setattr(LabelWriter, "write_batch", real)
    r = invoke(*label_args(image_folder, out, tiny_config, "--batch-size", "4"))
    assert r.exit_code == 0 and "6 already done" in r.output, r.output
    a, b = read_label_file(out), read_label_file(clean)
    assert sorted(a.paths) == sorted(b.paths) and len(set(a.paths)) == 12
    np.testing.assert_allclose(a.scores[[a.paths.index(p) for p in b.paths]], b.scores, rtol=0, atol=1e-6)


# -- item 13: every file of an engine folder is checked before any runtime starts ------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config) -> Path:
    pytest.importorskip("onnxruntime")
    from cdul_rt.export.clip import ExportOptions, export_clip

    out = tmp_path_factory.mktemp("engine") / "fp32"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc"), log=lambda m: None)
    return out


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_visual_graph_is_refused_before_labeling(tmp_path, exported, image_folder, tiny_config, damage):
    import shutil

    folder = tmp_path / "engine"
    shutil.copytree(exported, folder)
    visual = folder / "visual.onnx"  # `label` runs labeler.onnx only: visual.onnx is never opened by the run
    data = bytearray(visual.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    visual.write_bytes(bytes(data))
    out = tmp_path / "l.jsonl"
    r = invoke(*label_args(image_folder, out, tiny_config, "--runtime", "onnxruntime", "--engine-dir", str(folder)))
    expected = "does not match its sha256" if damage == "flip" else "is truncated"
    assert r.exit_code == 2 and "visual.onnx" in r.output and expected in r.output, r.output
    assert not out.exists()


# -- item 14: checkpoints load with weights_only=True; a pickled callable is refused, never run ----------------------
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.pt"])
def test_checkpoint_carrying_a_callable_is_refused(tmp_path, name):
    import torch

    from cdul_rt.errors import CdulError
    from cdul_rt.train.checkpoint import load_model_file

    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "code-ran"
    state = {"model": {}, "state_dict": {}, "meta": {"x": _Evil(str(marker))}}
    torch.save(state, run / name)
    with pytest.raises(CdulError, match="refusing to load"):
        load_model_file(run)
    assert not marker.exists()


def test_checkpoint_rng_state_round_trips_safely(tmp_path):
    import random

    import torch

    from cdul_rt.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    np.random.seed(3), random.seed(4), torch.manual_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    save_checkpoint(tmp_path, {"rng": rng_state(), "history": [{"loss": np.float32(0.5)}], "epoch": 1,
                               "config": {"out": tmp_path}})
    expected = (np.random.random(3), random.random(), torch.rand(2))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # loads under the safe unpickler
    set_rng_state(load_checkpoint(tmp_path)["rng"])
    assert state["history"][0]["loss"] == 0.5 and state["config"]["out"] == str(tmp_path)
    got = (np.random.random(3), random.random(), torch.rand(2))
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1] and torch.equal(got[2], expected[2])
