"""The decode pool: crops through a bounded shared-memory ring, in order; dead workers replaced, their images retried
once then failed as "decoder crashed"; workers, resource tracker and ring gone when the main process is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.decode import CRASH_REASON, CropJob, DecodePool, decode_stream, load_crops
from cdul_rt.decode_worker import KILL_ENV, KILL_ONCE_ENV, die_with_parent
from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig
from cdul_rt.shmring import NAME_PREFIX

from conftest import make_broken, make_images

CFG = PreprocessConfig(size=32)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm")


class Counting:
    """A path iterator that counts how many paths the pool has taken."""

    def __init__(self, paths):
        self.paths, self.taken = list(paths), 0

    def __iter__(self):
        for p in self.paths:
            self.taken += 1
            yield p


def _folder(tmp_path, n=30) -> list[Path]:
    return sorted(make_images(tmp_path / "imgs", n))


def test_ring_crops_equal_in_process_crops_in_submission_order(tmp_path):
    paths = _folder(tmp_path, 20)
    make_broken(tmp_path / "imgs")
    paths = sorted((tmp_path / "imgs").rglob("*.*"))
    got = []
    for item in decode_stream(paths, 3, CFG, workers=2, prefetch=4, hold=3):
        ref = load_crops(item.path, 3, CFG)
        assert (item.error is None) == (ref.error is None) and item.error == ref.error, item.path
        if ref.crops is not None:
            np.testing.assert_array_equal(item.crops, ref.crops)
        got.append(item.path)
        item.release()
        assert item.crops is None  # a released item no longer shows the slot, which a later image reuses
    assert got == paths


def test_in_flight_images_stay_bounded_whatever_the_folder_size(tmp_path):
    paths = Counting(_folder(tmp_path, 60))
    pool = DecodePool(CropJob(2, CFG), workers=2, slots=5)
    released, worst = 0, 0
    for item in pool.imap(paths):
        time.sleep(0.005)  # a slow consumer: workers could run far ahead if nothing held them back
        worst = max(worst, paths.taken - released)
        item.release()
        released += 1
    assert released == 60
    assert worst <= 5 and pool.stats.peak_in_flight == 5  # every slot used, never more taken than slots


def test_a_consumer_holding_every_slot_gets_an_error_not_a_hang(tmp_path):
    pool = DecodePool(CropJob(1, CFG), workers=1, slots=3)
    with pytest.raises(CdulError, match="all 3 decode slots are held"):
        _ = [item for item in pool.imap(_folder(tmp_path, 6))]  # never released


def test_killed_worker_is_replaced_and_its_innocent_images_retried(tmp_path):
    """A worker SIGKILLed from outside mid-run: every image still decodes, in order, and every slot comes back."""
    paths = _folder(tmp_path, 40)
    pool = DecodePool(CropJob(3, CFG), workers=2, slots=6)
    it = pool.imap(paths)
    first = next(it)
    first.release()
    killed = pool.worker_pids()[0]
    os.kill(killed, signal.SIGKILL)
    rest = []
    for _ in range(len(paths) - 1):
        item = next(it)
        assert item.error is None, item.error
        np.testing.assert_array_equal(item.crops, load_crops(item.path, 3, CFG).crops)
        rest.append(item.path)
        item.release()
    assert pool.slots_in_use() == 0  # nothing held back by the dead worker
    assert len(pool.worker_pids()) == 2 and killed not in pool.worker_pids()  # replaced
    assert list(it) == []
    assert [first.path] + rest == paths
    assert pool.stats.worker_deaths == 1 and pool.stats.crashed == 0


def _with_crasher(tmp_path, monkeypatch, n=24, at=5) -> tuple[list[Path], Path]:
    paths = _folder(tmp_path, n)
    bad = tmp_path / "imgs" / f"img_{at:04d}_crashme.png"
    paths[at].rename(bad)
    paths[at] = bad
    monkeypatch.setenv(KILL_ENV, "crashme")  # read by the spawned workers: they SIGKILL themselves on that image
    return paths, bad


def _run_checked(pool: DecodePool, paths: list[Path]) -> list[tuple[Path, str | None]]:
    """Decode ``paths``; check every decoded crop against the in-process decoder and that no slot stays taken."""
    items = []
    for item in pool.imap(paths):
        items.append((item.path, item.error))
        if item.crops is not None:
            np.testing.assert_array_equal(item.crops, load_crops(item.path, 3, CFG).crops)
        item.release()
        if len(items) == len(paths):
            assert pool.slots_in_use() == 0  # the dead workers' slots all came back
    assert [p for p, _ in items] == paths
    return items


def test_image_whose_first_decode_crashes_is_retried_in_a_fresh_worker(tmp_path, monkeypatch):
    paths, bad = _with_crasher(tmp_path, monkeypatch)
    (tmp_path / "once").mkdir()
    monkeypatch.setenv(KILL_ONCE_ENV, str(tmp_path / "once"))  # only the first attempt dies
    pool = DecodePool(CropJob(3, CFG), workers=2, slots=8)
    items = _run_checked(pool, paths)
    assert all(e is None for _, e in items)
    assert pool.stats.worker_deaths == 1 and pool.stats.retried >= 1 and pool.stats.crashed == 0


def test_image_that_kills_its_worker_twice_becomes_a_decoder_crashed_failure(tmp_path, monkeypatch):
    paths, bad = _with_crasher(tmp_path, monkeypatch)
    pool = DecodePool(CropJob(3, CFG), workers=2, slots=8)
    items = _run_checked(pool, paths)
    errors = {p.name: e for p, e in items if e is not None}
    assert list(errors) == [bad.name] and errors[bad.name].startswith(CRASH_REASON)
    assert "SIGKILL" in errors[bad.name]
    # an image queued behind the crasher in the same worker (retried > 1) was retried alone and decoded fine
    assert pool.stats.worker_deaths == 2 and pool.stats.crashed == 1 and pool.stats.retried >= 1


@pytest.mark.slow
def test_label_run_survives_a_crashing_decoder(tmp_path, image_folder, tiny_config, monkeypatch):
    from cdul_rt.cli import main
    from cdul_rt.labelfile import read_label_file

    def label(folder, out):
        args = ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
                "--out", str(out), "-q", "--workers", "2", "--batch-size", "4"]
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    label(image_folder, tmp_path / "clean.jsonl")
    clean = read_label_file(tmp_path / "clean.jsonl")
    (image_folder / "zz_crashme.png").write_bytes((image_folder / "img_0001.png").read_bytes())
    monkeypatch.setenv(KILL_ENV, "crashme")
    r = label(image_folder, tmp_path / "out.jsonl")
    assert "1 images could not be read" in r.output
    got = read_label_file(tmp_path / "out.jsonl")
    assert got.paths == clean.paths
    np.testing.assert_array_equal(got.scores, clean.scores)
    failures = [json.loads(line) for line in (tmp_path / "out.jsonl.failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["zz_crashme.png"]
    assert failures[0]["reason"].startswith(CRASH_REASON)


# -- nothing left behind when the main process dies -----------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waiting for init to reap it holds no memory


def _rings_of(pid: int) -> list[str]:
    return [p.name for p in Path("/dev/shm").glob(f"{NAME_PREFIX}{pid}_*")]


_ORPHAN = """
import os, sys, time
from cdul_rt.decode_worker import die_with_parent
parent = os.getpid()
child = os.fork()
if child == 0:
    die_with_parent(parent)
    time.sleep(600)  # busy, not reading any pipe: only the guard can end it
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


@linux_only
def test_a_busy_worker_dies_with_its_parent(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        os.kill(child, 0)  # running
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def sigkill_leaves_nothing(cmd: list[str], out: Path, what: str) -> None:
    """Run ``cmd`` (a ``cdul-rt`` command with ``--workers 2``), SIGKILL it mid-run, once its two decode workers,
    multiprocessing's resource tracker and its ring exist and ``out`` was created, and check all of them go."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            family = _descendants(proc.pid)
            if len(family) >= 3 and _rings_of(proc.pid) and out.exists():  # workers, tracker, run under way
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"{what} ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        family = _descendants(proc.pid)
        assert len(family) >= 3 and _rings_of(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (any(map(_alive, family)) or _rings_of(proc.pid)):
            time.sleep(0.1)
        assert not [p for p in family if _alive(p)], f"processes left behind after SIGKILL of {what}"
        assert not _rings_of(proc.pid), "shared-memory ring left in /dev/shm"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@linux_only
@pytest.mark.slow
def test_sigkill_of_label_leaves_no_worker_tracker_or_ring(tmp_path, tiny_config):
    make_images(tmp_path / "many", 300)
    cmd = [sys.executable, "-m", "cdul_rt", "label", str(tmp_path / "many"), "--model", str(tiny_config),
           "--pretrained", "none", "--classes", "voc", "--out", str(tmp_path / "o.jsonl"), "-q", "--workers", "2"]
    sigkill_leaves_nothing(cmd, tmp_path / "o.jsonl", "label")
