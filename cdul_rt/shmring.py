"""A fixed number of equal uint8 slots in one shared-memory block: decode workers write crops, the main process reads.

The main process creates the block (:meth:`SlotRing.create`) and owns its name; workers attach by name
(:meth:`SlotRing.attach`). Which slot is free, and who writes it, is decided by the decode pool, never here: this is
only memory. Crops never travel through a pipe or a pickle, and the block's size is the bound on decoded images in
flight. On Linux the whole block is reserved up front (``posix_fallocate``), so a ``/dev/shm`` too small for it is a
clear error at start instead of a worker killed by SIGBUS mid-run.

If the main process dies without unlinking the block (SIGKILL), multiprocessing's resource tracker unlinks it once the
last process holding its pipe (the main process and every spawned worker) is gone.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory

import numpy as np

from cdul_rt.errors import CdulError

NAME_PREFIX = "cdul_ring_"
_RETIRED: list[shared_memory.SharedMemory] = []  # closed while views were alive: unmapped once they are gone


def _sweep() -> None:
    for shm in list(_RETIRED):
        try:
            shm.close()
            _RETIRED.remove(shm)
        except BufferError:
            pass


class SlotRing:
    """``slots`` arrays of ``shape`` (uint8) in one shared-memory block."""

    def __init__(self, shm: shared_memory.SharedMemory, slots: int, shape: tuple[int, ...], owner: bool) -> None:
        self.shm, self.slots, self.shape, self.owner = shm, slots, tuple(shape), owner
        self.slot_bytes = int(np.prod(self.shape))
        # frombuffer holds a buffer export on the mapping (np.ndarray(buffer=...) does not), so the block can never
        # be unmapped under a live view: that would be a segfault, not an error
        self._array = np.frombuffer(shm.buf, np.uint8, slots * self.slot_bytes).reshape(slots, *self.shape)

    @property
    def name(self) -> str:
        return self.shm.name

    @property
    def nbytes(self) -> int:
        return self.slots * self.slot_bytes

    @classmethod
    def create(cls, slots: int, shape: tuple[int, ...]) -> "SlotRing":
        if slots < 1:
            raise CdulError(f"a slot ring needs at least one slot, got {slots}")
        size = slots * int(np.prod(shape))
        name = f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except OSError as exc:
            raise CdulError(f"cannot create {size / 2**20:.0f} MB of shared memory for the decode ring: {exc}; "
                            "lower --batch-size or --workers, or use --workers 0") from exc
        fd = getattr(shm, "_fd", -1)
        if hasattr(os, "posix_fallocate") and fd >= 0:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                shm.close()
                shm.unlink()
                raise CdulError(
                    f"shared memory (/dev/shm) has no room for the {size / 2**20:.0f} MB decode ring ({exc.strerror}); "
                    "lower --batch-size or --workers, give the container more (docker run --shm-size=2g), or use "
                    "--workers 0") from exc
        return cls(shm, slots, shape, owner=True)

    @classmethod
    def attach(cls, name: str, slots: int, shape: tuple[int, ...]) -> "SlotRing":
        # Python < 3.13 registers an attached block with the resource tracker too; workers share the main process's
        # tracker (spawn hands them its pipe), which keeps one entry per name, so this changes nothing.
        return cls(shared_memory.SharedMemory(name=name), slots, shape, owner=False)

    def slot(self, index: int) -> np.ndarray:
        """A view (no copy) of slot ``index``; valid until :meth:`close`."""
        return self._array[index]

    def close(self) -> None:
        """Unlink (owner) and unmap. Views still alive (e.g. the last batch, consumed after the pool stopped) keep
        the mapping, which is unmapped at a later close once they are gone."""
        self._array = None
        try:
            self.shm.close()
        except BufferError:
            _RETIRED.append(self.shm)
        _sweep()
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
