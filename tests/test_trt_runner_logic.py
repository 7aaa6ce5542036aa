"""The TensorRT runner's own logic without TensorRT or a GPU: chunking into whole images, the two-slot buffer
pipeline, broadcast inputs, output assembly, dtype casts and profile limits.

A test double stands in for the two native libraries: device memory is a dict of byte arrays, copies happen at once,
and the "engine" computes the fused labeler in numpy (a linear encoder + the real CDUL scoring and aggregation)
from whatever bytes sit at the addresses the runner bound with ``set_tensor_address``. Wrong slicing, a slot reused
before its results were read, a missing ``set_input_shape`` or a stale address all give wrong numbers here. What it
cannot show is real asynchrony; that needs a GPU (tests/test_gpu_runtimes.py, marked ``trt``).
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.aggregation import aggregate_np
from cdul_rt.labeling import class_scores_np

S, D, C, CPI = 4, 6, 5, 10
MEMORY: dict[int, np.ndarray] = {}
TRACE: list[tuple] = []  # the order in which the runner enqueued uploads and made the host wait
_ptrs = itertools.count(4096, 4096)


class FakeDeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.ptr = nbytes, next(_ptrs)
        MEMORY[self.ptr] = np.zeros(nbytes, np.uint8)

    def free(self) -> None:
        MEMORY.pop(self.ptr)
        self.ptr = 0


class FakePinnedBuffer:
    def __init__(self, nbytes: int, dtype) -> None:
        self.array = np.zeros(nbytes // np.dtype(dtype).itemsize, dtype)

    def view(self, shape):
        return self.array[:int(np.prod(shape))].reshape(shape)

    def free(self) -> None:
        self.array = None


class FakeStream:
    def __int__(self) -> int:
        return 1

    def h2d(self, dst: int, src: np.ndarray) -> None:
        TRACE.append(("h2d", src.shape))
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        MEMORY[dst][:raw.size] = raw

    def d2h(self, dst: np.ndarray, src: int) -> None:
        raw = dst.view(np.uint8).reshape(-1)
        raw[:] = MEMORY[src][:raw.size]

    def wait(self, event) -> None: ...
    def synchronize(self) -> None: ...
    def destroy(self) -> None: ...


class FakeEvent:
    def record(self, stream) -> None: ...

    def synchronize(self) -> None:
        TRACE.append(("host waits", None))

    def destroy(self) -> None: ...


class FakeContext:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine, self.shapes, self.addr, self.runs = engine, {}, {}, 0

    def set_input_shape(self, name, shape) -> bool:
        """As TensorRT: False (and nothing set) for a shape outside the profile or one it refuses."""
        lo, _, hi = self.engine.profile[name]
        if len(shape) != len(hi) or any(not lo[i] <= shape[i] <= hi[i] for i in range(len(shape))):
            return False
        if (name, tuple(shape)) in self.engine.refuse:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        k = self.shapes["crops"][0] // CPI
        return (k, D) if name == "image_embeddings" else (k, self.shapes["text_embeddings"][0])

    def set_tensor_address(self, name, ptr) -> bool:
        if name in self.engine.refuse:
            return False
        self.addr[name] = ptr
        return True

    def _read(self, name):
        dt, shape = self.engine.dtypes[name], self.shapes[name]
        n = int(np.prod(shape)) * dt.itemsize
        return MEMORY[self.addr[name]][:n].view(dt).reshape(shape)

    def execute_async_v3(self, stream: int) -> bool:
        self.runs += 1
        crops, text = self._read("crops").astype(np.float32), self._read("text_embeddings")
        zeta, lam = float(self._read("zeta")[0]), float(self._read("lambda")[0])
        outs = reference(crops, text, zeta, lam, self.engine.w)
        for name, value in zip(("S_final", "S_global", "S_ag", "image_embeddings"), outs):
            raw = value.astype(np.float32).view(np.uint8).ravel()
            MEMORY[self.addr[name]][:raw.size] = raw
        return True


class FakeEngine:
    def __init__(self, crops_dtype=np.float32, max_images: int = 8, opt_images: int = 4) -> None:
        self.w = np.random.default_rng(7).normal(size=(3 * S * S, D)).astype(np.float32)
        self.dtypes = {"crops": np.dtype(crops_dtype), "text_embeddings": np.dtype(np.float32),
                       "zeta": np.dtype(np.float32), "lambda": np.dtype(np.float32),
                       "S_final": np.dtype(np.float32), "S_global": np.dtype(np.float32),
                       "S_ag": np.dtype(np.float32), "image_embeddings": np.dtype(np.float32)}
        self.names = list(self.dtypes)
        self.profile = {"crops": ((CPI, 3, S, S), (opt_images * CPI, 3, S, S), (max_images * CPI, 3, S, S)),
                        "text_embeddings": ((1, D), (C, D), (64, D)), "zeta": ((1,),) * 3, "lambda": ((1,),) * 3}
        self.contexts: list[FakeContext] = []
        self.refuse: set = set()  # (name, shape) for set_input_shape, or name for set_tensor_address -> False

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "in" if name in self.profile else "out"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return (-1, 3, S, S) if name == "crops" else (-1, D) if name == "text_embeddings" else (1,)

    def get_tensor_profile_shape(self, name, index):
        return self.profile[name]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def reference(crops, text, zeta, lam, w):
    """(S_final, S_global, S_ag, image_embeddings of the global views)."""
    emb = crops.reshape(crops.shape[0], -1) @ w
    s = class_scores_np(emb, text, np.log(100.0))
    global_emb = emb[::CPI] / np.linalg.norm(emb[::CPI], axis=1, keepdims=True)
    return (*aggregate_np(s.reshape(-1, CPI, s.shape[-1]), "cdul", zeta, lam), global_emb)


@pytest.fixture
def fake_native(monkeypatch, tmp_path):
    """Swap the TensorRT and CUDA entry points the runner uses for the doubles above."""
    from cdul_rt.engines.trt import builder, cuda

    holder = {}
    trt = types.SimpleNamespace(__version__="10.fake", TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
                                nptype=lambda dt: dt)
    monkeypatch.setattr(builder, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(builder, "deserialize", lambda plan, verbose=False: (object(), holder["engine"]))
    monkeypatch.setattr(cuda, "device_info", lambda index=0: None)
    monkeypatch.setattr(cuda, "set_device", lambda index: None)
    monkeypatch.setattr(cuda, "DeviceBuffer", FakeDeviceBuffer)
    monkeypatch.setattr(cuda, "PinnedBuffer", FakePinnedBuffer)
    monkeypatch.setattr(cuda, "Stream", FakeStream)
    monkeypatch.setattr(cuda, "Event", FakeEvent)
    plan = tmp_path / "labeler.fp16.plan"
    plan.write_bytes(b"plan")
    return holder, plan


def _feed(images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"crops": rng.normal(size=(images * CPI, 3, S, S)).astype(np.float32),
            "text_embeddings": rng.normal(size=(C, D)).astype(np.float32)}


@pytest.mark.parametrize("images,chunk", [(11, 4), (8, 8), (1, 4), (5, 1)])
def test_chunked_pipeline_equals_one_big_batch(fake_native, images, chunk):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = engine = FakeEngine(max_images=8)
    feed = _feed(images)
    want = reference(feed["crops"], feed["text_embeddings"], 0.25, 0.5, engine.w)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.25, lam=0.5, chunk_images=chunk) as r:
        got = r.infer(feed)
        again = r.infer(_feed(images, seed=1))  # buffers and addresses are reused across calls
    for name, ref in zip(("S_final", "S_global", "S_ag", "image_embeddings"), want):
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=1e-5)
    assert engine.contexts[0].runs == -(-images // chunk) * 2  # one engine run per chunk
    want2 = reference(*_feed(images, seed=1).values(), 0.25, 0.5, engine.w)
    np.testing.assert_allclose(again["S_final"], want2[0], rtol=0, atol=1e-5)
    assert not MEMORY  # every device buffer freed on deactivate


def test_chunk_defaults_to_opt_and_is_capped_by_the_profile(fake_native):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = FakeEngine(max_images=6, opt_images=3)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0) as r:
        assert r.chunk == 3
        out = r.infer(_feed(7))  # more images than the profile's max: chunked, not refused
        assert out["S_final"].shape == (7, C)
    holder["engine"] = FakeEngine(max_images=6, opt_images=3)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0, chunk_images=50) as r:
        assert r.chunk == 6


def test_fp16_engine_inputs_are_cast(fake_native):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = engine = FakeEngine(crops_dtype=np.float16)
    feed = _feed(3)
    want = reference(feed["crops"].astype(np.float16), feed["text_embeddings"], 0.3, 1.0, engine.w)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0, chunk_images=2) as r:
        got = r.infer(feed)  # float32 in, as the labeler contract says
    np.testing.assert_allclose(got["S_final"], want[0], rtol=1e-5, atol=1e-6)


def test_too_many_classes_and_bad_batches_are_refused(fake_native):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = FakeEngine()
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0) as r:
        feed = _feed(2)
        with pytest.raises(CdulError, match="--max-classes|profile"):
            r.infer({**feed, "text_embeddings": np.zeros((65, D), np.float32)})
        with pytest.raises(CdulError, match="whole images of 10 crops"):
            r.infer({**feed, "crops": feed["crops"][:15]})
        with pytest.raises(CdulError, match="must be float32"):
            r.infer({**feed, "crops": feed["crops"].astype(np.float64)})


def test_default_chunking_overlaps_uploads_with_compute(fake_native):
    """At the labeling default (8 images per call, engine opt 8) the call is cut in two, and the second chunk's
    upload is enqueued before the host waits for the first chunk's results: the copy can run under its compute."""
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = engine = FakeEngine(max_images=32, opt_images=8)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0) as r:
        TRACE.clear()
        feed = _feed(8)
        got = r.infer(feed)
    np.testing.assert_allclose(got["S_final"], reference(*feed.values(), 0.3, 1.0, engine.w)[0], atol=1e-5)
    crops = [i for i, (op, shape) in enumerate(TRACE) if op == "h2d" and len(shape) == 4]
    assert [TRACE[i][1][0] for i in crops] == [40, 40] and engine.contexts[0].runs == 2
    first_wait_for_results = next(i for i, (op, _) in enumerate(TRACE) if op == "host waits" and i > crops[0] + 1)
    assert crops[1] < first_wait_for_results


def test_refusals_by_tensorrt_are_errors_not_garbage(fake_native):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = engine = FakeEngine(max_images=8)
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0, chunk_images=2) as r:
        engine.refuse.add(("crops", (2 * CPI, 3, S, S)))
        with pytest.raises(CdulError, match=r"input 'crops' of shape \(20, 3, 4, 4\) is outside"):
            r.infer(_feed(4))
        engine.refuse.clear()
        engine.refuse.add("S_final")
        with pytest.raises(CdulError, match="refused the device address of 'S_final'"):
            r.infer(_feed(4))


def test_batches_the_profile_cannot_hold_are_refused_with_a_message(fake_native):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    holder, plan = fake_native
    holder["engine"] = engine = FakeEngine(max_images=8)
    engine.profile["crops"] = ((2 * CPI, 3, S, S), (4 * CPI, 3, S, S), (8 * CPI, 3, S, S))  # at least 2 images
    engine.profile["text_embeddings"] = ((3, D), (C, D), (64, D))  # at least 3 classes
    with TrtLabelerRunner(plan, grid=3, image_size=S, embed_dim=D, zeta=0.3, lam=1.0) as r:
        with pytest.raises(CdulError, match="below the engine's profile minimum of 2"):
            r.infer(_feed(1))
        with pytest.raises(CdulError, match=r"'text_embeddings' of shape \(2, 6\) is outside .*--trt-max-classes"):
            r.infer({**_feed(2), "text_embeddings": np.zeros((2, D), np.float32)})
        out = r.infer(_feed(5))  # 5 images: chunks of 3 + 2 (balanced), never a chunk of 1
    assert out["S_final"].shape == (5, C)
