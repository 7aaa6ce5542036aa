"""bench/training.py: a finished shorter run in --work is extended to --epochs, and equals a run of that length."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # labels 24 scenes and trains tiny runs (~15 s)

ROOT = Path(__file__).resolve().parents[1]
WORLD = ("train", "val", "pseudo_labels.jsonl", "val_pseudo_labels.jsonl")


def _bench(work: Path, epochs: int, *extra: str) -> dict:
    out = work / f"result-{epochs}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "training.py"), "--seeds", "0", "--scenes", "16", "--val-scenes", "8",
           "--variants", "cdul", "--epochs", str(epochs), "--work", str(work), "--json", str(out),
           "--markdown", str(work / "table.md"), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return json.loads(out.read_text())


def _rows(work: Path) -> list[dict]:
    lines = (work / "seed0" / "cdul" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def test_a_shorter_run_is_extended_to_equal_a_run_of_that_length(tmp_path):
    short, fresh = tmp_path / "short", tmp_path / "fresh"
    _bench(short, 4)  # warm-up 3 (the recipe's), as in the 5-epoch runs: a resume refuses other settings
    (fresh / "seed0").mkdir(parents=True)
    for name in WORLD:  # the same scenes and pseudo labels
        (fresh / "seed0" / name).symlink_to(short / "seed0" / name)
    extended = _bench(short, 5, "--eval-every", "4")
    direct = _bench(fresh, 5, "--eval-every", "4")

    rows = _rows(short)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4, 5]  # 4 epochs, then one more
    assert rows == _rows(fresh)  # every number of every epoch, the held-out scores of epochs 4 and 5 included
    ext, new = extended["per_seed"][0]["variants"]["cdul"], direct["per_seed"][0]["variants"]["cdul"]
    assert ext["pred_val"] == new["pred_val"] and ext["labels_final"] == new["labels_final"]
    assert set(ext["pred_val_by_epoch"]) == {"4", "5"}
    assert "| | epoch 4 | epoch 5 |" in (short / "table.md").read_text()  # the held-out-by-epoch table
    refined = "refined_labels.jsonl"
    assert (short / "seed0" / "cdul" / refined).read_bytes() == (fresh / "seed0" / "cdul" / refined).read_bytes()


def test_a_longer_run_is_refused(tmp_path):
    _bench(tmp_path, 2)
    with pytest.raises(subprocess.CalledProcessError) as err:
        _bench(tmp_path, 1)
    assert b"holds a longer run" in err.value.stderr
