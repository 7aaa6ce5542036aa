"""Native TensorRT runners: the named-tensor API (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``), cuda-python device buffers, page-locked host buffers, and copy/compute overlap.

Overlap: a batch is cut into chunks of whole items (images of 1+g^2 crops for the labeler) that go through a
two-slot pipeline on three streams -- host->device copies, compute, device->host copies -- so that chunk j+1 is
uploaded and chunk j-1 downloaded while chunk j computes. Events order the slots: an input slot is refilled only
after the compute that read it is done, an output slot is rewritten only after its download finished. Inputs that
are not split (the class text embeddings, zeta, lambda) are uploaded once per call. Torch is never imported.

Overlap needs at least two chunks per call, so by default every call is cut into (at least) ``OVERLAP_CHUNKS``
balanced chunks: at the labeling default of 8 images per call that is two chunks of 4 images, and the upload of the
second overlaps the compute of the first. ``chunk_images`` fixes the chunk size instead (the call size = no
overlap). Every chunk stays inside the engine's optimization profile; TensorRT's answers to ``set_input_shape`` and
``set_tensor_address`` are checked, and a batch the profile cannot hold is refused with a message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cdul_rt.aggregation import Aggregation
from cdul_rt.engines.base import EMBEDDING_OUTPUT, LABELER_OUTPUTS, BaseRunner, LabelerRunnerMixin, TensorSpec
from cdul_rt.errors import CdulError

SLOTS = 2
OVERLAP_CHUNKS = 2  # chunks per call by default: the fewest that let copies overlap compute
PROFILE_HINT = ("rebuild the engine with a profile that holds it (`cdul-rt export --engine tensorrt "
                "--trt-max-images N --trt-max-classes N`)")


def plan_chunks(items: int, min_items: int, max_items: int, chunk_items: int | None = None,
                parts: int = OVERLAP_CHUNKS) -> list[tuple[int, int]]:
    """Contiguous chunks of whole items, each within the profile's [min_items, max_items].

    ``chunk_items`` given: chunks of that size (capped by the profile). Otherwise at least ``parts`` chunks (so
    copies overlap compute) of at most ``max_items``. Sizes are balanced (they differ by at most one), so a short
    last chunk never falls below the profile's minimum when a split exists that respects it."""
    if not 1 <= min_items <= max_items:
        raise CdulError(f"invalid engine profile: {min_items} to {max_items} items per run")
    if items < min_items:
        raise CdulError(f"a batch of {items} item(s) is below the engine's profile minimum of {min_items}; "
                        f"{PROFILE_HINT}")
    target = min(chunk_items or max(1, -(-items // parts)), max_items)
    n = -(-items // max(target, 1))
    while n > 1 and items // n < min_items:  # fewer, larger chunks until each reaches the minimum
        n -= 1
    if -(-items // n) > max_items:
        raise CdulError(f"{items} items cannot be cut into runs of {min_items} to {max_items} items (the engine's "
                        f"profile); {PROFILE_HINT}")
    base, extra = divmod(items, n)
    bounds, start = [], 0
    for j in range(n):
        stop = start + base + (1 if j < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class TrtRunner(BaseRunner):
    """Runs one serialized engine. ``split`` maps each batched input to its rows per item (e.g. crops: 10); those
    inputs are chunked along dim 0 and every output is concatenated along dim 0. Other inputs are broadcast."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, split: dict[str, int], device: int = 0, chunk_items: int | None = None,
                 verbose: bool = False) -> None:
        super().__init__()
        self.plan_path, self.split, self.device = Path(plan), dict(split), device
        self.chunk_items, self.verbose = chunk_items, verbose

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        from cdul_rt.engines.trt import cuda
        from cdul_rt.engines.trt.builder import deserialize, import_tensorrt

        trt = import_tensorrt()
        cuda.device_info(self.device)  # a clear error when there is no GPU
        cuda.set_device(self.device)
        if not self.plan_path.is_file():
            raise CdulError(f"TensorRT engine {self.plan_path} does not exist; build it with "
                            "`cdul-rt export --engine tensorrt`")
        self.runtime, self.engine = deserialize(self.plan_path.read_bytes(), self.verbose)
        if self.engine is None:
            raise CdulError(f"TensorRT {trt.__version__} could not load {self.plan_path} (built with another "
                            "TensorRT version or GPU?); rebuild it with `cdul-rt export --engine tensorrt`")
        self.context = self.engine.create_execution_context()
        self._discover(trt)
        self._allocate(cuda)

    def _discover(self, trt) -> None:
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        self.inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(e.get_tensor_dtype(n))) for n in names}
        def profile(n: str, k: int) -> tuple[int, ...]:  # k: 0 min, 1 opt, 2 max of profile 0; fixed shapes as is
            return tuple(e.get_tensor_profile_shape(n, 0)[k]) if -1 in tuple(e.get_tensor_shape(n)) \
                else tuple(e.get_tensor_shape(n))

        self.min_shapes = {n: profile(n, 0) for n in self.inputs}
        self.opt_shapes = {n: profile(n, 1) for n in self.inputs}
        self.max_shapes = {n: profile(n, 2) for n in self.inputs}
        unknown = set(self.split) - set(self.inputs)
        if unknown:
            raise CdulError(f"{self.plan_path.name} has no inputs {sorted(unknown)} (it has {self.inputs})")
        first = next(iter(self.split))
        self.max_items = self.max_shapes[first][0] // self.split[first]
        self.min_items = max(1, -(-self.min_shapes[first][0] // self.split[first]))
        opt_items = max(1, self.opt_shapes[first][0] // self.split[first])
        self.chunk = min(self.chunk_items or opt_items, self.max_items)  # the largest chunk: buffers are this size
        # output shapes at the largest chunk, from the context (TensorRT infers them from the input shapes)
        for n in self.inputs:
            self._set_shape(n, self._chunk_shape(n, self.chunk))
        self.max_out = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """``set_input_shape`` after checking the shape against the profile; TensorRT's False is an error too."""
        lo, hi = self.min_shapes[name], self.max_shapes[name]
        inside = len(shape) == len(hi) and all(a <= d <= b for a, d, b in zip(lo, shape, hi))
        if not inside or not self.context.set_input_shape(name, tuple(shape)):
            raise CdulError(f"{self.plan_path.name}: input {name!r} of shape {tuple(shape)} is outside the engine's "
                            f"optimization profile ({lo} to {hi}); {PROFILE_HINT}")

    def _set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, int(ptr)):
            raise CdulError(f"{self.plan_path.name}: TensorRT refused the device address of {name!r} (not device "
                            "memory of this GPU, or misaligned); see the TensorRT log")

    def _chunk_shape(self, name: str, items: int) -> tuple[int, ...]:
        shape = self.max_shapes[name]
        return (items * self.split[name], *shape[1:]) if name in self.split else shape

    def _allocate(self, cuda) -> None:
        def nbytes(shape, name):
            return int(np.prod(shape)) * self.dtypes[name].itemsize

        self.streams = {k: cuda.Stream() for k in ("h2d", "compute", "d2h")}
        self.events = {k: [cuda.Event() for _ in range(SLOTS)] for k in ("h2d", "compute", "d2h")}
        self.dev_in = [{n: cuda.DeviceBuffer(nbytes(self._chunk_shape(n, self.chunk), n)) for n in self.split}
                       for _ in range(SLOTS)]
        self.host_in = [{n: cuda.PinnedBuffer(nbytes(self._chunk_shape(n, self.chunk), n), self.dtypes[n])
                         for n in self.split} for _ in range(SLOTS)]
        self.dev_out = [{n: cuda.DeviceBuffer(nbytes(self.max_out[n], n)) for n in self.outputs}
                        for _ in range(SLOTS)]
        self.host_out = [{n: cuda.PinnedBuffer(nbytes(self.max_out[n], n), self.dtypes[n]) for n in self.outputs}
                         for _ in range(SLOTS)]
        shared = [n for n in self.inputs if n not in self.split]
        self.dev_shared = {n: cuda.DeviceBuffer(nbytes(self.max_shapes[n], n)) for n in shared}
        self.host_shared = {n: cuda.PinnedBuffer(nbytes(self.max_shapes[n], n), self.dtypes[n]) for n in shared}

    # -- inference ------------------------------------------------------------------------------------------------
    def input_specs(self) -> list[TensorSpec]:
        def user_dtype(n):  # float inputs are fed as float32 and cast (fp16 engine inputs), ints as they are
            return np.dtype(np.float32) if self.dtypes[n].kind == "f" else self.dtypes[n]

        return [TensorSpec(n, user_dtype(n), (None, *self.max_shapes[n][1:])) for n in self.inputs]

    def _upload_shared(self, feed: dict[str, np.ndarray]) -> None:
        s = self.streams["h2d"]
        s.synchronize()  # the previous call's uploads from these pinned buffers are finished
        for n, buf in self.dev_shared.items():
            arr = np.ascontiguousarray(feed[n], dtype=self.dtypes[n])
            self._set_shape(n, arr.shape)  # checked against the profile before anything is copied
            view = self.host_shared[n].view(arr.shape)
            np.copyto(view, arr)
            s.h2d(buf.ptr, view)
            self._set_address(n, buf.ptr)

    def _enqueue(self, j: int, feed: dict[str, np.ndarray], a: int, b: int) -> dict[str, tuple]:
        slot = j % SLOTS
        ev, st = self.events, self.streams
        ev["h2d"][slot].synchronize()  # pinned input slot no longer read by the upload of chunk j-2
        st["h2d"].wait(ev["compute"][slot])  # device input slot no longer read by compute of chunk j-2
        for n, rows in self.split.items():
            view = self.host_in[slot][n].view(((b - a) * rows, *feed[n].shape[1:]))
            np.copyto(view, feed[n][a * rows:b * rows], casting="same_kind")
            st["h2d"].h2d(self.dev_in[slot][n].ptr, view)
            self._set_shape(n, view.shape)
            self._set_address(n, self.dev_in[slot][n].ptr)
        ev["h2d"][slot].record(st["h2d"])
        st["compute"].wait(ev["h2d"][slot])
        st["compute"].wait(ev["d2h"][slot])  # device output slot downloaded (chunk j-2)
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}
        for n in self.outputs:
            self._set_address(n, self.dev_out[slot][n].ptr)
        if not self.context.execute_async_v3(int(st["compute"])):
            raise CdulError(f"TensorRT failed to run {self.plan_path.name} (see the TensorRT log)")
        ev["compute"][slot].record(st["compute"])
        st["d2h"].wait(ev["compute"][slot])
        for n in self.outputs:
            st["d2h"].d2h(self.host_out[slot][n].view(shapes[n]), self.dev_out[slot][n].ptr)
        ev["d2h"][slot].record(st["d2h"])
        return shapes

    def _collect(self, j: int, shapes: dict[str, tuple], results: dict[str, list]) -> None:
        slot = j % SLOTS
        self.events["d2h"][slot].synchronize()
        for n in self.outputs:
            results[n].append(self.host_out[slot][n].view(shapes[n]).astype(np.float32, copy=True))

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = next(iter(self.split))
        items = feed[first].shape[0] // self.split[first]
        bounds = plan_chunks(items, self.min_items, self.chunk, self.chunk_items)  # refused before any upload
        self._upload_shared(feed)
        results: dict[str, list] = {n: [] for n in self.outputs}
        pending: list[tuple[int, dict]] = []
        for j, (a, b) in enumerate(bounds):
            if len(pending) == SLOTS:  # this slot's previous chunk must be read out before its download reruns
                self._collect(*pending.pop(0), results)
            pending.append((j, self._enqueue(j, feed, a, b)))
        for j, shapes in pending:
            self._collect(j, shapes, results)
        return {n: np.concatenate(results[n]) for n in self.outputs}

    def _deactivate(self) -> None:
        self.streams["d2h"].synchronize()
        for group in (self.dev_in, self.host_in, self.dev_out, self.host_out):
            for slot in group:
                for buf in slot.values():
                    buf.free()
        for buf in (*self.dev_shared.values(), *self.host_shared.values()):
            buf.free()
        for events in self.events.values():
            for e in events:
                e.destroy()
        for s in self.streams.values():
            s.destroy()
        self.context = self.engine = self.runtime = None


class TrtLabelerRunner(LabelerRunnerMixin, TrtRunner):
    """The fused labeler engine behind the common labeler contract; the aggregation's numbers (zeta, lambda) are
    fed from the settings where the engine's mode has them as inputs."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, grid: int, image_size: int, embed_dim: int, zeta: float, lam: float,
                 device: int = 0, chunk_images: int | None = None) -> None:
        self.crops_per_image = 1 + grid * grid
        self.image_size, self.embed_dim = image_size, embed_dim
        self.zeta, self.lam = zeta, lam
        self.params = Aggregation(zeta=zeta, lam=lam).graph_feeds()  # the mode is the engine's (baked in)
        TrtRunner.__init__(self, plan, {"crops": self.crops_per_image}, device, chunk_images)

    def _activate(self) -> None:
        TrtRunner._activate(self)
        if not set(LABELER_OUTPUTS) <= set(self.outputs):
            raise CdulError(f"{self.plan_path.name} is not a labeler engine (outputs {self.outputs})")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        full = {**feed, **{name: value for name, value in self.params.items() if name in self.inputs}}
        out = TrtRunner._infer(self, full)
        # engines built from labeler graphs that predate image_embeddings return scores only
        return {n: out[n] for n in (*LABELER_OUTPUTS, EMBEDDING_OUTPUT) if n in out}
