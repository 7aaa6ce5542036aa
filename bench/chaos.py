"""Chaos soak for `cdul-rt label` (issue 13): random SIGKILLs of the main process and of decode workers, a disk that
fills up and is freed, on a folder holding every kind of bad file; then one row per image, scores equal to a clean
run, every bad file in the failures file, and no process left behind.

    python bench/chaos.py --kills 20                      # every format, tiny random CLIP, ~40 images
    python bench/chaos.py --kills 3 --formats jsonl,csv   # a quick look

For each format: a clean reference run, then ``--kills`` cycles. A cycle starts `label` on the same --out (resuming,
or ``--overwrite`` when the previous cycle finished) and after a random delay kills the main process with SIGKILL,
or (``--worker-kills`` times, once the workers have started) one decode worker; ``--fills`` cycles instead fill the disk holding --out
(a small tmpfs mounted here when running as root, else ENOSPC injected into the label writer) until the run stops,
then free it. A final uninterrupted run must then complete; the checks compare it with the reference. Descendants of
every started process are tracked through /proc; any still alive 10 s after its parent died counts as left behind
(and is then killed by pid). Linux only. Prints a table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from conftest import TINY_CLIP_CONFIG, make_broken, make_images  # noqa: E402

FORMATS = ("jsonl", "csv", "parquet", "npz")
MAX_PIXELS = 1_000_000


# -- the folder: good images, good images with hostile names or pixel types, and every kind of bad file -------------
def make_folder(folder: Path, n: int) -> tuple[set[str], set[str]]:
    """Returns (relative names that must be labeled, relative names that must be in the failures file)."""
    import numpy as np
    from PIL import Image

    paths = make_images(folder, n, sizes=((40, 56), (64, 48), (50, 50)))
    good = {p.relative_to(folder).as_posix() for p in paths}
    raw = os.fsencode(folder) + b"/bad\xff\xfename.png"  # not valid UTF-8
    with open(raw, "wb") as f:
        f.write(paths[1].read_bytes())
    good.add(os.fsdecode(b"bad\xff\xfename.png"))
    shutil.copy(paths[3], folder / "new\nline, \"quoted\".png")  # newline, comma and quotes in a CSV field
    good.add("new\nline, \"quoted\".png")
    Image.fromarray(np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(40, 48), "F").save(folder / "float.tif")
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16) * 30).reshape(40, 48)).save(folder / "sixteen.png")
    good |= {"float.tif", "sixteen.png"}
    bad = set(make_broken(folder))  # non-image bytes, zero bytes, truncated JPEG
    Image.new("RGB", (1200, 1000), (9, 9, 9)).save(folder / "bomb.png")  # over --max-pixels
    (folder / "fake.gif").write_bytes(b"GIF89a" + os.urandom(64))
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    bad |= {"bomb.png", "fake.gif", "dangling.jpg"}
    return good, bad


# -- processes ----------------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process, None when gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (None if fields[0] == "Z" else (int(fields[1]), int(fields[19])))


def descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            st = _stat(child)
            if st is not None:
                out.add((child, st[1]))
                todo.append(child)
    return out


def alive(proc: tuple[int, int]) -> bool:
    st = _stat(proc[0])
    return st is not None and st[1] == proc[1]


def is_decode_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing" in cmd and b"resource_tracker" not in cmd


# -- the disk ------------------------------------------------------------------------------------------------------------
class Disk:
    """Where --out lives: a small tmpfs (root) that can be filled and freed, else a plain folder + injected ENOSPC."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.tmpfs = False
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                               capture_output=True, text=True)
            self.tmpfs = r.returncode == 0
        self.filler = path / "filler.bin"

    def fill(self) -> None:
        """Write until the device is full (unbuffered, so nothing is left to flush at close)."""
        for path, size in ((self.filler, 1 << 16), (self.path / "filler2.bin", 1)):  # then the last partial page
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                continue
            try:
                block = b"\0" * size
                while True:
                    os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)

    def free(self) -> None:
        for p in (self.filler, self.path / "filler2.bin"):
            p.unlink(missing_ok=True)

    def close(self) -> None:
        if self.tmpfs:
            for _ in range(30):  # a run still finishing keeps it busy for a moment
                if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                    return
                time.sleep(1)


INJECT = """import errno, os, sys
from cdul_rt.labelfile import LabelWriter
real, calls = LabelWriter.write_batch, [0]
def full(self, paths, *a):
    calls[0] += 1
    if calls[0] >= int(os.environ["CHAOS_ENOSPC_AT"]):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, paths, *a)
LabelWriter.write_batch = full
from cdul_rt.cli import main
sys.argv = ["cdul-rt", *sys.argv[1:]]
main()
"""


# -- one soak per format -------------------------------------------------------------------------------------------
@dataclass
class Counts:
    format: str
    cycles: int = 0
    main_kills: int = 0  # SIGKILL delivered to a running main process
    worker_kills: int = 0  # SIGKILL delivered to a decode worker
    worker_kill_aborts: int = 0  # runs that stopped with an error after a worker kill (should be 0)
    hangs: int = 0  # runs still going long after a worker kill or a full disk
    finished_before_kill: int = 0
    disk_fills: int = 0
    disk_full_clean_errors: int = 0  # stopped with the one-line "no space left" message
    disk_full_tracebacks: int = 0
    rows_expected: int = 0
    rows: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    rows_unexpected: int = 0
    score_max_diff: float = 0.0
    bad_files_missing_from_failures: int = 0
    failures_duplicated: int = 0
    good_files_in_failures: int = 0
    processes_left: int = 0
    final_rc: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, work: Path, folder: Path, model: Path, workers: int, batch_size: int, env: dict) -> None:
        self.work, self.folder, self.model = work, folder, model
        self.workers, self.batch_size, self.env = workers, batch_size, env
        self.tracked: set[tuple[int, int]] = set()

    def command(self, out: Path, *extra: str, inject: bool = False) -> list[str]:
        head = [sys.executable, "-c", INJECT] if inject else [sys.executable, "-m", "cdul_rt"]
        return [*head, "label", str(self.folder), "--model", str(self.model), "--pretrained", "none",
                "--classes", "voc", "--out", str(out), "-q", "--batch-size", str(self.batch_size),
                "--workers", str(self.workers), "--max-pixels", str(MAX_PIXELS), *extra]

    def start(self, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or self.env)

    def watch(self, proc: subprocess.Popen, seconds: float) -> bool:
        """Track descendants for up to ``seconds``; True if the process is still running."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if proc.poll() is not None:
                return False
            self.tracked |= descendants(proc.pid)
            time.sleep(0.02)
        self.tracked |= descendants(proc.pid)
        return proc.poll() is None

    def reap(self, grace: float = 10.0) -> int:
        """Descendants still alive ``grace`` s after their parent died: counted, then killed by pid."""
        end = time.monotonic() + grace
        while time.monotonic() < end and any(alive(p) for p in self.tracked):
            time.sleep(0.1)
        left = [p for p in self.tracked if alive(p)]
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.tracked = {p for p in self.tracked if alive(p)}
        return len(left)


def finish(soak: Soak, proc: subprocess.Popen, counts: Counts, after: str, limit: float = 600) -> None:
    """Let a run go on to its end; one still running after ``limit`` s counts as hung and is killed."""
    if soak.watch(proc, limit):
        counts.hangs += 1
        counts.notes.append(f"run still going {limit:.0f}s after {after}: killed")
        proc.kill()


def run_format(soak: Soak, fmt: str, kills: int, fills: int, worker_kills: int, reference: dict[str, list[float]],
               good: set[str], bad: set[str], disk: Disk, clean_seconds: float, rng: random.Random,
               log=print) -> Counts:
    from cdul_rt.labelfile import read_label_file

    counts = Counts(fmt)
    started = time.perf_counter()
    out = disk.path / f"labels.{fmt}"
    overwrite = False
    worker_target = worker_kills
    cycle = -1
    # until --kills main-process kills, --worker-kills worker kills and --fills disk fills have happened
    # (a run that finishes before its kill does not count), at most 8x as many cycles
    while (counts.main_kills < kills or counts.worker_kills < worker_target or counts.disk_fills < fills) \
            and cycle < 8 * (kills + worker_target + fills):
        cycle += 1
        need = [kind for kind, left in (("main", kills - counts.main_kills), ("fill", fills - counts.disk_fills),
                                        ("worker", worker_target - counts.worker_kills)) if left > 0]
        kind = rng.choice(need)
        log(f"{fmt} cycle {cycle}: so far {counts.main_kills} main / {counts.worker_kills} worker kills, "
            f"{counts.finished_before_kill} finished, {counts.disk_fills} fills, {counts.processes_left} left")
        counts.cycles += 1
        extra = ("--overwrite",) if overwrite else ()
        if kind == "fill":
            env = soak.env
            if not disk.tmpfs:
                env = {**soak.env, "CHAOS_ENOSPC_AT": str(rng.randint(1, 6))}
                counts.disk_fills += 1
            proc = soak.start(soak.command(out, *extra, inject=not disk.tmpfs), env)
            if disk.tmpfs and soak.watch(proc, rng.uniform(0.3, 1.0) * clean_seconds):
                disk.fill()
                counts.disk_fills += 1
            finish(soak, proc, counts, "a full disk")
            _, err = proc.communicate()
            err = err.decode(errors="replace")
            disk.free()
            if "Traceback" in err:
                counts.disk_full_tracebacks += 1
                counts.notes.append(f"traceback at disk full: {err.strip().splitlines()[-1][:200]}")
            elif proc.returncode == 2 and "no space left" in err:
                counts.disk_full_clean_errors += 1
            overwrite = proc.returncode == 0  # a finished output has nothing left to label: the next cycle starts over
            counts.processes_left += soak.reap()
            continue
        proc = soak.start(soak.command(out, *extra))
        worker = kind == "worker"
        # a worker kill needs the run still decoding: wait less (then poll for a worker below)
        delay = rng.uniform(0.0, 0.4 if worker else 1.0) * clean_seconds
        if soak.watch(proc, delay):
            if worker:  # decode workers start once the model is loaded: wait for one
                victims: list[int] = []
                while not victims and soak.watch(proc, 0.1):
                    victims = [pid for pid, _ in descendants(proc.pid) if is_decode_worker(pid)]
                if victims:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    counts.worker_kills += 1
                    finish(soak, proc, counts, "a worker kill")
                    _, err = proc.communicate()
                    if proc.returncode != 0:
                        counts.worker_kill_aborts += 1
                        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                        counts.notes.append(f"worker kill aborted the run (rc {proc.returncode}): {last[0][:160]}")
                    overwrite = proc.returncode == 0  # finished: nothing left to decode, so the next cycle starts over
                    counts.processes_left += soak.reap()
                    continue
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            counts.main_kills += 1
            overwrite = False
        else:
            _, err = proc.communicate()
            if proc.returncode != 0:
                counts.notes.append(f"cycle {cycle}: rc {proc.returncode}: {err.decode(errors='replace')[-300:]}")
            counts.finished_before_kill += 1
            # a finished output has nothing left to label (a resume would end before any kill): start over, so
            # kills land in fresh --overwrite runs as well as in resumed ones (after a kill)
            overwrite = True
        counts.processes_left += soak.reap()
    final = subprocess.run(soak.command(out), capture_output=True, env=soak.env, timeout=600)
    counts.final_rc = final.returncode
    if final.returncode != 0:
        counts.notes.append(f"final run rc {final.returncode}: {final.stderr.decode(errors='replace')[-300:]}")
    else:
        table = read_label_file(out)
        import numpy as np

        counts.rows, counts.rows_expected = len(table.paths), len(good)
        present = set(table.paths)
        counts.rows_lost = len(good - present)
        counts.rows_duplicated = len(table.paths) - len(present)
        counts.rows_unexpected = len(present - good)
        diffs = [np.abs(table.scores[i] - np.asarray(reference[p])).max() for i, p in enumerate(table.paths)
                 if p in reference]
        counts.score_max_diff = float(max(diffs)) if diffs else float("nan")
        lines = [json.loads(x)["path"] for x in Path(f"{out}.failures.jsonl").read_text().splitlines() if x]
        counts.bad_files_missing_from_failures = len(bad - set(lines))
        counts.failures_duplicated = len(lines) - len(set(lines))
        counts.good_files_in_failures = len(set(lines) & good)
    counts.processes_left += soak.reap()
    counts.seconds = round(time.perf_counter() - started, 1)
    for p in disk.path.glob("labels.*"):
        p.unlink()
    return counts


def soak(kills: int, fills: int, formats: tuple[str, ...], images: int, workers: int, batch_size: int,
         worker_kills: int, seed: int, disk_mb: int = 8, log=print) -> list[Counts]:
    from cdul_rt.labelfile import read_label_file

    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="cdul-chaos-"))
    disk = None
    try:
        folder = work / "images"
        good, bad = make_folder(folder, images)
        model = work / "tiny.json"
        model.write_text(json.dumps(TINY_CLIP_CONFIG))
        env = {**os.environ, "CDUL_RT_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
        runner = Soak(work, folder, model, workers, batch_size, env)
        ref_out = work / "reference.jsonl"
        # twice: the first run fills the caches (text embeddings, the default runtime's cached ONNX export), so
        # only the second is as long as the runs the kills are timed against
        for attempt in (work / "warm-up.jsonl", ref_out):
            t0 = time.perf_counter()
            r = subprocess.run(runner.command(attempt), capture_output=True, env=env, timeout=600)
            clean_seconds = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"reference run failed: {r.stderr.decode(errors='replace')[-2000:]}")
        ref = read_label_file(ref_out)
        reference = {p: ref.scores[i].tolist() for i, p in enumerate(ref.paths)}
        assert set(ref.paths) == good, f"reference run labeled {sorted(set(ref.paths) ^ good)} unexpectedly"
        log(f"reference: {len(ref.paths)} rows, {len(bad)} bad files, {clean_seconds:.1f}s per clean run")
        disk = Disk(work / "disk", disk_mb)
        log(f"disk for --out: {'tmpfs of ' + str(disk_mb) + ' MB (filled for real)' if disk.tmpfs else 'injected ENOSPC'}")
        results = []
        for fmt in formats:
            c = run_format(runner, fmt, kills, fills, worker_kills, reference, good, bad, disk, clean_seconds, rng,
                           log)
            log(json.dumps(asdict(c)))
            results.append(c)
        return results
    finally:
        if disk is not None:
            disk.close()
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[Counts]) -> str:
    cols = ["format", "main_kills", "worker_kills", "worker_kill_aborts", "hangs", "finished_before_kill",
            "disk_fills",
            "disk_full_clean_errors", "disk_full_tracebacks", "rows_expected", "rows_lost", "rows_duplicated",
            "score_max_diff", "bad_files_missing_from_failures", "failures_duplicated", "processes_left", "seconds"]
    buf = io.StringIO()
    buf.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
    for c in results:
        d = asdict(c)
        buf.write("| " + " | ".join(f"{d[k]:.2g}" if isinstance(d[k], float) and k != "seconds" else str(d[k])
                                    for k in cols) + " |\n")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs of the main process per format")
    ap.add_argument("--fills", type=int, default=3, help="disk-full cycles per format")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--worker-kills", type=int, default=5, help="SIGKILLs of a decode worker per format")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = soak(args.kills, args.fills, tuple(args.formats.split(",")), args.images, args.workers,
                   args.batch_size, args.worker_kills, args.seed)
    print(table(results))
    for c in results:
        for note in c.notes[:5]:
            print(f"{c.format}: {note}")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in results], indent=2))


if __name__ == "__main__":
    main()
