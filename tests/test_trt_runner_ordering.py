"""The TensorRT runner's stream and event ordering, tested with a device that defers all work (issue 19 item 3).

The doubles in test_trt_runner_logic.py run every copy and every engine call at once, so a runner that forgot a
``stream.wait(event)`` or an ``event.synchronize()`` still gets the right numbers there. Here each stream is a queue
that runs only when the host forces it, and as late as CUDA allows:
- ``stream.synchronize()`` runs that stream's queue; ``event.synchronize()`` runs its stream up to the record;
- ``stream.wait(event)`` makes the stream's later work run only after the event's stream reached the record
  (the record as it was when ``wait`` was called, as ``cudaStreamWaitEvent`` does);
- a host-to-device copy reads the pinned host buffer when it runs (not when it was enqueued), a device-to-host copy
  writes the host buffer when it runs, and the engine reads its bound device memory when it runs.
So a missing wait makes the engine read inputs not yet uploaded, a missing host wait reads results not yet
downloaded, and a pinned slot refilled too early is uploaded with the next chunk's data: wrong numbers, every time.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from test_trt_runner_logic import (  # noqa: F401 - fake_native is a fixture used below
    CPI,
    MEMORY,
    D,
    FakeContext,
    FakeEngine,
    S,
    _feed,
    fake_native,
    reference,
)

STREAMS: dict[int, "LazyStream"] = {}
_handles = itertools.count(1)


class LazyStream:
    def __init__(self) -> None:
        self.handle, self.ops, self.done = next(_handles), [], 0
        STREAMS[self.handle] = self

    def __int__(self) -> int:
        return self.handle

    def run_to(self, pos: int) -> None:
        while self.done < pos:
            op = self.ops[self.done]
            self.done += 1
            op()

    def h2d(self, dst: int, src: np.ndarray) -> None:
        def copy() -> None:  # reads the pinned buffer now, when the copy runs
            raw = np.ascontiguousarray(src).view(np.uint8).ravel()
            MEMORY[dst][:raw.size] = raw
        self.ops.append(copy)

    def d2h(self, dst: np.ndarray, src: int) -> None:
        def copy() -> None:
            raw = dst.view(np.uint8).reshape(-1)
            raw[:] = MEMORY[src][:raw.size]
        self.ops.append(copy)

    def wait(self, event: "LazyEvent") -> None:
        stream, pos = event.stream, event.pos  # the record as of now
        if stream is not None:
            self.ops.append(lambda: stream.run_to(pos))

    def synchronize(self) -> None:
        self.run_to(len(self.ops))

    def destroy(self) -> None:
        self.synchronize()


class LazyEvent:
    def __init__(self) -> None:
        self.stream, self.pos = None, 0

    def record(self, stream: LazyStream) -> None:
        self.stream, self.pos = stream, len(stream.ops)

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.run_to(self.pos)

    def destroy(self) -> None: ...


class LazyContext(FakeContext):
    def execute_async_v3(self, stream: int) -> bool:
        """Enqueued on the compute stream with the shapes and addresses bound now; memory is read when it runs."""
        shapes, addr = dict(self.shapes), dict(self.addr)

        def run() -> None:
            now_shapes, now_addr = self.shapes, self.addr
            self.shapes, self.addr = shapes, addr
            try:
                FakeContext.execute_async_v3(self, stream)
            finally:
                self.shapes, self.addr = now_shapes, now_addr
        STREAMS[stream].ops.append(run)
        return True


class LazyEngine(FakeEngine):
    def create_execution_context(self):
        self.contexts.append(LazyContext(self))
        return self.contexts[-1]


@pytest.fixture
def lazy_native(fake_native, monkeypatch):
    from cdul_rt.engines.trt import cuda

    monkeypatch.setattr(cuda, "Stream", LazyStream)
    monkeypatch.setattr(cuda, "Event", LazyEvent)
    return fake_native


def test_the_lazy_device_really_defers_work():
    """The double itself: nothing runs until the host forces it, and waits order streams."""
    MEMORY[1] = np.zeros(4, np.uint8)
    a, b, ev = LazyStream(), LazyStream(), LazyEvent()
    host = np.arange(4, dtype=np.uint8)
    a.h2d(1, host)
    ev.record(a)
    out = np.zeros(4, np.uint8)
    b.wait(ev)
    b.d2h(out, 1)
    host[:] = 9  # changed before the copy ran: the copy sees the new bytes
    assert (MEMORY[1] == 0).all() and (out == 0).all()
    b.synchronize()  # forces a up to the record first
    assert (out == 9).all()
    MEMORY.pop(1)


@pytest.mark.parametrize("images,chunk", [(11, 4), (8, None), (5, 1), (3, 2)])
def test_pipeline_is_right_when_the_device_runs_as_late_as_it_may(lazy_native, images, chunk):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = lazy_native
    holder["engine"] = engine = LazyEngine(max_images=8)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.25, lam=0.5, chunk_images=chunk) as r:
        for seed in (0, 1, 2):  # calls back to back reuse every pinned and device slot
            feed = _feed(images, seed)
            got = r.infer(feed)
            want = reference(feed["crops"], feed["text_embeddings"], 0.25, 0.5, engine.w)
            for name, ref in zip(("S_final", "S_global", "S_ag", "image_embeddings"), want):
                np.testing.assert_allclose(got[name], ref, rtol=0, atol=1e-5, err_msg=f"{name} seed {seed}")
    assert not MEMORY
