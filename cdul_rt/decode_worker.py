"""The decode worker process: read a task from its pipe, decode + crop into a ring slot, answer; die with its parent.

Torch-free (PIL + numpy): a worker is spawned, imports only this and what its job (:class:`cdul_rt.decode.DecodeJob`,
e.g. :class:`cdul_rt.decode.CropJob`) needs.

Protocol on the worker's own duplex pipe, main -> worker: ``(seq, slot, path)`` or ``None`` (exit); worker -> main:
``("ready", pid)`` once attached, then ``(seq, error)`` per task, ``error`` None when the crops are in the slot.

Parent death: ``PR_SET_PDEATHSIG`` (Linux: the kernel SIGKILLs the worker when the thread that started it ends,
which the pool keeps alive for exactly the pool's lifetime), a watchdog thread that exits when the parent pid changes
(every platform), and EOF on the pipe when the worker is idle. A worker never outlives the main process by more than
the watchdog's period, even when the main process was SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

# Test-only fault injection, read once per worker: a worker SIGKILLs itself on any image whose file name contains
# this text (stands for a decoder segfault or the kernel's OOM killer); with KILL_ONCE_ENV naming a folder, only the
# first time per file name (a marker file there says it happened). Not user options; see tests/test_decode_pool.py.
KILL_ENV = "CDUL_RT_TEST_DECODER_KILL_ON"
KILL_ONCE_ENV = "CDUL_RT_TEST_DECODER_KILL_ONCE_DIR"

WATCHDOG_PERIOD_S = 0.5
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when ``parent_pid`` is gone, however it died."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still covers it
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_PERIOD_S)
        os._exit(1)

    threading.Thread(target=watch, name="cdul-parent-watchdog", daemon=True).start()


def _test_kill(name: str) -> None:
    once = os.environ.get(KILL_ONCE_ENV)
    if once:
        try:
            os.close(os.open(os.path.join(once, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def worker_main(conn, parent_pid: int, ring_name: str, slots: int, job) -> None:
    """Entry point of a spawned decode worker (``multiprocessing.Process(target=worker_main, ...)``); ``job`` is
    the pool's :class:`cdul_rt.decode.DecodeJob`, its ``shape`` the ring's slot shape."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the main process stops us
    from cdul_rt.shmring import SlotRing

    ring = SlotRing.attach(ring_name, slots, tuple(job.shape))
    kill_on = os.environ.get(KILL_ENV) or None
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                task = conn.recv()
            except EOFError:  # the main process is gone
                break
            if task is None:
                break
            seq, slot, path = task
            if kill_on is not None and kill_on in Path(path).name:
                _test_kill(Path(path).name)
            item = job(Path(path), out=ring.slot(slot))
            conn.send((seq, item.error if item.crops is None else None))
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        ring.close()
