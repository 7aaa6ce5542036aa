"""`predict --workers N` decodes through label's shared-memory decode pool: scores equal the output made before the
change, a worker killed mid-run costs at most its image (a "decoder crashed" failures row), and SIGKILL of predict
leaves no worker, resource tracker or ring behind."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.decode import CRASH_REASON
from cdul_rt.decode_worker import KILL_ENV, KILL_ONCE_ENV
from cdul_rt.labelfile import read_label_file

from conftest import make_images
from test_decode_pool import linux_only, sigkill_leaves_nothing

pytest.importorskip("onnxruntime")

REF = Path(__file__).parent / "data" / "predict_ref"  # engine + before.npz: see its README
IMAGES = Path(__file__).parent / "data" / "pool_ref" / "images"


def _predict(images: Path, out: Path, workers: int, batch: int = 4) -> str:
    args = ["predict", str(images), "--engine", str(REF / "engine"), "--out", str(out), "-q", "--threads", "1",
            "-b", str(batch), "-j", str(workers)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _failures(out: Path) -> list[dict]:
    path = out.with_name(out.name + ".failures.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def before():
    table = read_label_file(REF / "before.npz")
    assert len(table.paths) == 6 and float(table.scores.max() - table.scores.min()) > 0.5  # equality means something
    return table


def test_scores_equal_the_predict_output_made_before_the_pool(before, tmp_path):
    got = {}
    for workers in (2, 0):
        out = tmp_path / f"after_{workers}.npz"
        _predict(IMAGES, out, workers)
        got[workers] = read_label_file(out)
        assert got[workers].paths == before.paths and got[workers].classes == before.classes
        # before.npz was made on another machine's onnxruntime kernels; here (the machine that made it) the
        # difference measured 0.0
        assert np.abs(got[workers].scores - before.scores).max() <= 1e-6
        assert _failures(out) == []
    np.testing.assert_array_equal(got[2].scores, got[0].scores)  # pool and in-process: bit for bit


def test_a_worker_killed_mid_predict_fails_only_its_image(before, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    shutil.copytree(IMAGES, folder)
    shutil.copy(folder / "ref_2.png", folder / "zz_crashme.png")  # sorts last: the others batch as in before.npz
    monkeypatch.setenv(KILL_ENV, "crashme")  # the worker decoding it SIGKILLs itself, every time
    out = tmp_path / "out.npz"
    output = _predict(folder, out, workers=2)
    got = read_label_file(out)
    assert got.paths == before.paths
    assert np.abs(got.scores - before.scores).max() <= 1e-6
    failures = _failures(out)
    assert [f["path"] for f in failures] == ["zz_crashme.png"]
    assert failures[0]["reason"].startswith(CRASH_REASON) and "SIGKILL" in failures[0]["reason"]
    assert "1 images could not be read" in output

    # killed the first time only: retried in a fresh worker, predicted like the image it copies
    monkeypatch.setenv(KILL_ONCE_ENV, str(tmp_path))
    once = tmp_path / "once.npz"
    _predict(folder, once, workers=2)
    got = read_label_file(once)
    assert (tmp_path / "zz_crashme.png").exists()  # the kill happened
    assert got.paths == [*before.paths, "zz_crashme.png"] and _failures(once) == []
    assert np.abs(got.scores[-1] - before.scores[before.paths.index("ref_2.png")]).max() <= 1e-6


@linux_only
@pytest.mark.slow
def test_sigkill_of_predict_leaves_no_worker_tracker_or_ring(tmp_path):
    make_images(tmp_path / "many", 400, sizes=((300, 400), (480, 360)))
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "cdul_rt", "predict", str(tmp_path / "many"), "--engine", str(REF / "engine"),
           "--out", str(out), "-q", "--workers", "2", "--batch-size", "2", "--threads", "1"]
    sigkill_leaves_nothing(cmd, out, "predict")
