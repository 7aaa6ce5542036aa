"""Device memory, page-locked host memory, streams and events through cuda-python (the CUDA runtime bindings).

Why cuda-python and not pycuda: it is NVIDIA's own binding, shipped as manylinux/aarch64 wheels (pycuda compiles
against a local CUDA toolkit, which edge images often lack), it is what TensorRT 10's Python samples use, it does not
create a CUDA context behind the user's back on import (``pycuda.autoinit`` does, and fights with torch's primary
context when both live in one process), and PyTorch's CUDA wheels already depend on it (``cuda-bindings``), so on a
GPU machine with torch it is usually installed already. Every call returns ``(err, *values)``; :func:`call` turns a
non-success code into a :class:`CdulError` that names the failing call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from cdul_rt.errors import CdulError

INSTALL_HINT = ("install the TensorRT extra on the GPU machine: `pip install 'cdul-rt[tensorrt]'` "
                "(tensorrt + cuda-python); see README 'Serving and edge devices'")


def cudart():
    """The CUDA runtime module of cuda-python (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # cuda-python < 12.6
        return runtime
    except ImportError as exc:
        raise CdulError(f"cuda-python is not installed; {INSTALL_HINT}") from exc


def call(result, what: str = "CUDA call"):
    """Unpack ``(err, *values)`` from a cuda-python call; raise a CdulError on any error code."""
    rt = cudart()
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        msg = text.decode() if isinstance(text, bytes) else str(text)
        raise CdulError(f"{what} failed: {msg} ({getattr(err, 'name', err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"
    total_memory: int


def device_count() -> int:
    """Number of visible CUDA devices; 0 when there is no driver, no device or no cuda-python."""
    try:
        rt = cudart()
    except CdulError:
        return 0
    err, n = rt.cudaGetDeviceCount()
    return int(n) if err == rt.cudaError_t.cudaSuccess else 0


def device_info(index: int = 0) -> DeviceInfo:
    rt = cudart()
    err, n = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or n == 0:
        reason = rt.cudaGetErrorString(err)[1].decode() if err != rt.cudaError_t.cudaSuccess else "no device"
        raise CdulError(f"no CUDA device is visible ({reason}); TensorRT needs an NVIDIA GPU with its driver. "
                        "Use --runtime onnxruntime or torch on this machine")
    if not 0 <= index < n:
        raise CdulError(f"CUDA device {index} does not exist; this machine has {n} (cuda:0..cuda:{n - 1})")
    prop = call(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(index, name, f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


class DeviceBuffer:
    """``nbytes`` of device memory (cudaMalloc); ``ptr`` is the address TensorRT binds to a tensor."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(call(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            call(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory viewed as a flat numpy array: async copies from it overlap with kernels, and
    transfers run at full PCIe speed (pageable memory is staged through a driver buffer first)."""

    def __init__(self, nbytes: int, dtype: np.dtype) -> None:
        self.nbytes = max(int(nbytes), np.dtype(dtype).itemsize)
        self.ptr = int(call(cudart().cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype)

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        return self.array[:n].reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            call(cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class Stream:
    def __init__(self) -> None:
        rt = cudart()
        self.handle = call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")

    def __int__(self) -> int:
        return int(self.handle)

    def h2d(self, dst: int, src: np.ndarray) -> None:
        rt = cudart()
        call(rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                self.handle), "cudaMemcpyAsync(host->device)")

    def d2h(self, dst: np.ndarray, src: int) -> None:
        rt = cudart()
        call(rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                self.handle), "cudaMemcpyAsync(device->host)")

    def wait(self, event: "Event") -> None:
        call(cudart().cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        call(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            call(cudart().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class Event:
    def __init__(self) -> None:
        rt = cudart()
        self.handle = call(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        call(cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        call(cudart().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            call(cudart().cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


def set_device(index: int) -> None:
    call(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")
