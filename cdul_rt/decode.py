"""Decoding and cropping in worker processes into a bounded shared-memory ring, overlapped with encoding.

Workers (spawned, torch-free: PIL + numpy, :mod:`cdul_rt.decode_worker`) run a *job* per image and write its
uint8 array straight into a slot of a :class:`~cdul_rt.shmring.SlotRing`: :class:`CropJob` (``label``: the crops
``[1+g^2, S, S, 3]``) or :class:`cdul_rt.api.classifier.ClassifierJob` (``predict``: the whole image resized to the
classifier's input, ``[S, S, 3]``). Only ``(seq, slot, path)`` and
``(seq, error)`` travel through pipes. The ring has ``slots`` slots, which bounds decoded images in flight (at
workers, waiting to be yielded, or held by the consumer) whatever the folder size. Items come back in submission
order; the consumer calls :meth:`Decoded.release` once it has used the crops (after the runner consumed them), which
gives the slot back.

A dispatcher thread feeds the workers (at most :data:`PER_WORKER` tasks each, so a worker never waits for the main
process, which may be busy encoding) and watches them. A worker that dies (SIGKILL, the OOM killer, a decoder
segfault) never stops the run: it is replaced, its tasks keep their slots and are retried once, each alone in a
worker with nothing else in flight (so an innocent image queued behind a crasher is not blamed), and an image whose
retry crashes too becomes ``Decoded(path, None, "decoder crashed ...")``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Protocol

import numpy as np

from cdul_rt.crops import crops_per_image, image_crops
from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, describe_error, open_rgb
from cdul_rt.preprocess import PreprocessConfig

CRASH_REASON = "decoder crashed"
PER_WORKER = 2  # tasks queued per worker: one decoding, one waiting in its pipe
MAX_START_FAILURES = 3  # workers in a row that die before they are ready: the pool gives up with an error
STOP_TIMEOUT_S = 5.0


@dataclass
class Decoded:
    """One image's crops (uint8 ``[1+g^2, S, S, 3]``) or the reason it could not be read.

    Crops from a :class:`DecodePool` are a view into its shared-memory ring: call :meth:`release` when done with them
    (they are gone afterwards). For crops that own their memory, :meth:`release` only drops them.
    """

    path: Path
    crops: np.ndarray | None
    error: str | None = None
    _release: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        release, self._release, self.crops = self._release, None, None
        if release is not None:
            release()


def load_crops(path: Path, grid: int, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
               jpeg_draft: bool = False, out: np.ndarray | None = None) -> Decoded:
    """``jpeg_draft``: decode large JPEGs downscaled as long as every tile stays >= the model input size.
    ``out``: write the crops into this uint8 ``[1+g^2, S, S, 3]`` array (a ring slot) instead of a new one."""
    try:
        img = open_rgb(path, max_pixels, (grid, cfg.size) if jpeg_draft else None)
        return Decoded(path, image_crops(img, grid, cfg, out=out))
    except CdulError as exc:
        return Decoded(path, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is data, not a crash
        return Decoded(path, None, describe_error(exc))


def crop_shape(grid: int, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    return (crops_per_image(grid), cfg.size, cfg.size, 3)


class DecodeJob(Protocol):
    """The per-image work a :class:`DecodePool` worker runs: picklable (it is sent to spawned workers) and torch-free.

    ``shape``: the uint8 array every image becomes (a ring slot's shape). Calling it decodes ``path`` into ``out`` (a
    ring slot) or a new array when ``out`` is None; an unreadable image is a ``Decoded`` with its reason, never a
    raise."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __call__(self, path: Path, out: np.ndarray | None = None) -> Decoded: ...


@dataclass(frozen=True)
class CropJob:
    """``label``'s job: :func:`load_crops`, the global view and the g x g tiles."""

    grid: int
    cfg: PreprocessConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_draft: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return crop_shape(self.grid, self.cfg)

    def __call__(self, path: Path, out: np.ndarray | None = None) -> Decoded:
        return load_crops(path, self.grid, self.cfg, self.max_pixels, self.jpeg_draft, out=out)


@dataclass
class PoolStats:
    """What happened in a pool; ``peak_in_flight`` counts slots in use (never above ``slots``)."""

    slots: int = 0
    submitted: int = 0
    worker_deaths: int = 0
    retried: int = 0
    crashed: int = 0  # images given up as "decoder crashed"
    peak_in_flight: int = 0


@dataclass
class _Task:
    seq: int
    path: Path
    slot: int
    attempt: int = 0


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: object  # multiprocessing.connection.Connection, the main process's end
    outstanding: dict[int, _Task] = field(default_factory=dict)
    exclusive: bool = False  # running a retry: gets nothing else until it answers
    ready: bool = False


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class DecodePool:
    """``workers`` spawned decode processes running ``job`` into a ring of ``slots`` slots; see the module doc.

    ``slots`` must exceed the number of items the consumer holds at once (e.g. one batch) or nothing could be
    decoded ahead; holding all of them is reported as an error instead of a hang.
    """

    def __init__(self, job: DecodeJob, workers: int = 2, slots: int = 32) -> None:
        if workers < 1:
            raise CdulError(f"a decode pool needs at least one worker, got {workers}")
        self.job, self.n_workers, self.slots = job, workers, slots
        self.shape = tuple(job.shape)
        self.stats = PoolStats(slots=slots)
        self._cv = threading.Condition()
        self._ring = None
        self._free: list[int] = []
        self._results: dict[int, Decoded] = {}
        self._held = 0
        self._exhausted = False
        self._error: BaseException | None = None
        self._stop = False
        self._closed = False
        self._workers: list[_Worker] = []
        self._retry: deque[_Task] = deque()
        self._start_failures = 0
        self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        self._thread: threading.Thread | None = None

    # -- consumer side (the caller's thread) ----------------------------------------------------------------------
    def imap(self, paths: Iterable[Path]) -> Iterator[Decoded]:
        """Decoded items for ``paths`` in order; the pool is shut down when the iterator ends or is closed."""
        from cdul_rt.shmring import SlotRing

        if self._ring is not None:
            raise CdulError("a DecodePool runs one imap at a time")
        self._ring = SlotRing.create(self.slots, self.shape)
        self._free = list(range(self.slots - 1, -1, -1))
        self._thread = threading.Thread(target=self._dispatch, args=(iter(paths),), name="cdul-decode-dispatch",
                                        daemon=True)
        self._thread.start()
        try:
            seq = 0
            while True:
                with self._cv:
                    while seq not in self._results:
                        if self._error is not None:
                            raise self._error
                        if self._exhausted and seq >= self.stats.submitted:
                            return
                        if self._held >= self.slots:
                            raise CdulError(f"all {self.slots} decode slots are held by the consumer; release() "
                                            "decoded items once used, or give the pool more slots")
                        self._cv.wait(0.5)
                    item = self._results.pop(seq)
                    self._held += item._release is not None
                seq += 1
                yield item
        finally:
            self.close()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in list(self._workers)]

    def slots_in_use(self) -> int:
        """Slots at a worker, decoded and waiting, or held by the consumer."""
        with self._cv:
            return self.slots - len(self._free)

    def _release_slot(self, slot: int) -> None:
        with self._cv:
            if self._closed:
                return
            self._held -= 1
            self._free.append(slot)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"w")
        except OSError:  # closed: the pool is stopping
            pass

    def close(self) -> None:
        """Stop the workers and the dispatcher, unlink the ring. Idempotent."""
        if self._closed:
            return
        with self._cv:
            self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        with self._cv:
            self._closed = True
            self._results.clear()
        if self._ring is not None:
            self._ring.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- dispatcher thread ------------------------------------------------------------------------------------------
    def _dispatch(self, paths: Iterator[Path]) -> None:
        """Own the workers: start them (here, so that their PR_SET_PDEATHSIG follows this thread, which lives as long
        as the pool), feed them, read their answers, replace the dead ones."""
        try:
            for _ in range(self.n_workers):
                self._workers.append(self._spawn())
            while True:
                with self._cv:
                    if self._stop or self._error is not None:
                        break
                self._feed(paths)
                waitables = [self._wake_r] + [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
                for ready in mp_wait(waitables, timeout=1.0):
                    if ready is self._wake_r:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                for w in list(self._workers):
                    self._drain(w)
                    if not w.proc.is_alive():
                        self._on_death(w)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            with self._cv:
                self._error = self._error or exc
                self._cv.notify_all()
        finally:
            self._stop_workers()

    def _spawn(self) -> _Worker:
        from cdul_rt.decode_worker import worker_main

        ctx = mp.get_context("spawn")  # workers start clean: no copy of a torch runtime and its threads
        here, there = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=worker_main, name="cdul-decode", daemon=True,
                           args=(there, os.getpid(), self._ring.name, self.slots, self.job))
        proc.start()
        there.close()  # only the worker holds its end now, so its death reads as EOF here
        return _Worker(proc, here)

    def _feed(self, paths: Iterator[Path]) -> None:
        for w in self._workers:  # retries first, each alone in an idle worker (the fresh replacement, usually)
            if self._retry and not w.outstanding:
                self._send(w, self._retry.popleft())
                w.exclusive = True
        while not self._retry:  # new work waits until every retry has a worker, or retries could starve
            idle = [w for w in self._workers if not w.exclusive and len(w.outstanding) < PER_WORKER]
            with self._cv:
                if self._exhausted or not self._free or not idle:
                    return
            try:
                path = next(paths)
            except StopIteration:
                with self._cv:
                    self._exhausted = True
                    self._cv.notify_all()
                return
            with self._cv:
                task = _Task(self.stats.submitted, path, self._free.pop())
                self.stats.submitted += 1
                self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.slots - len(self._free))
            self._send(min(idle, key=lambda w: len(w.outstanding)), task)

    def _send(self, w: _Worker, task: _Task) -> None:
        w.outstanding[task.seq] = task
        try:
            w.conn.send((task.seq, task.slot, task.path))
        except OSError:  # the worker just died: its tasks are handled with its death
            pass

    def _drain(self, w: _Worker) -> None:
        """Handle every answer already in the worker's pipe (also those a worker sent just before dying)."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready":
                    w.ready = True
                    self._start_failures = 0
                    continue
                seq, error = msg
                task = w.outstanding.pop(seq)
                if error is None:
                    item = Decoded(task.path, self._ring.slot(task.slot), None, partial(self._release_slot, task.slot))
                else:
                    item = Decoded(task.path, None, error)
                self._finish(task, item)
        except (EOFError, OSError):  # dead: its sentinel says so
            pass
        if not w.outstanding:
            w.exclusive = False

    def _finish(self, task: _Task, item: Decoded) -> None:
        with self._cv:
            if item.crops is None:
                self._free.append(task.slot)
            self._results[task.seq] = item
            self._cv.notify_all()

    def _on_death(self, w: _Worker) -> None:
        w.proc.join()
        self._drain(w)  # answers it sent between the last drain and its death still count
        code = w.proc.exitcode
        w.conn.close()
        self._workers.remove(w)
        self.stats.worker_deaths += 1
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise CdulError(f"decode workers keep dying before they start ({_exit_reason(code)}); "
                                "run with --workers 0 to see the error in this process")
        for task in sorted(w.outstanding.values(), key=lambda t: t.seq):
            if task.attempt == 0:
                self.stats.retried += 1
                self._retry.append(_Task(task.seq, task.path, task.slot, attempt=1))  # keeps its slot
            else:
                self.stats.crashed += 1
                self._finish(task, Decoded(task.path, None, f"{CRASH_REASON} (worker {_exit_reason(code)} twice, "
                                                              "e.g. out of memory or a decoder bug)"))
        self._workers.append(self._spawn())

    def _stop_workers(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.proc.join(STOP_TIMEOUT_S)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self._workers.clear()


def decode_stream(paths: Iterable[Path], grid: int, cfg: PreprocessConfig, workers: int = 2,
                  max_pixels: int = DEFAULT_MAX_PIXELS, prefetch: int = 16, jpeg_draft: bool = False,
                  hold: int = 0) -> Iterator[Decoded]:
    """``label``'s crops (:class:`CropJob`) for each path, in order; see :func:`decode_items`."""
    return decode_items(paths, CropJob(grid, cfg, max_pixels, jpeg_draft), workers, prefetch, hold)


def decode_items(paths: Iterable[Path], job: DecodeJob, workers: int = 2, prefetch: int = 16,
                 hold: int = 0) -> Iterator[Decoded]:
    """Yield ``job``'s :class:`Decoded` for each path, in order. ``workers=0`` decodes in this process.

    With workers, at most ``hold + prefetch`` images are decoded and not yet released: ``hold`` is how many items
    the consumer keeps before releasing them (a batch), ``prefetch`` how many are decoded ahead of that.
    """
    if workers <= 0:
        yield from map(job, paths)
        return
    yield from DecodePool(job, workers, slots=hold + max(1, prefetch)).imap(paths)
