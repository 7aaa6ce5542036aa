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

INSTALL_HINT = ("install the TensorRT extra for the GPU machine's CUDA major: `pip install 'cdul-rt[tensorrt]'` "
                "(= cdul-rt[tensorrt-cu12]: tensorrt-cu12 + cuda-python 12.x, NVIDIA driver >= 525.60.13) or "
                "`pip install 'cdul-rt[tensorrt-cu13]'` (driver >= 580.65); see README 'Serving and edge devices'")
# the oldest Linux driver of each CUDA major's runtime (CUDA minor-version compatibility baselines)
MIN_DRIVER = {12: "525.60.13", 13: "580.65"}


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


def bindings_version() -> str | None:
    """The installed cuda-python bindings version (cuda-bindings from 12.6 on, cuda-python before), or None."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def driver_advice(error: str, driver_cuda: int, bindings: str | None) -> str:
    """Why CUDA cannot start and what to install. ``driver_cuda``: ``cudaDriverGetVersion`` (e.g. 12040 = the driver
    runs CUDA <= 12.4; 0 = no driver); ``bindings``: the cuda-python version."""
    major = int(bindings.split(".")[0]) if bindings and bindings.split(".")[0].isdigit() else None
    if driver_cuda <= 0:
        return (f"no NVIDIA driver was found ({error}); install the NVIDIA driver (>= {MIN_DRIVER[12]} for CUDA 12, "
                f">= {MIN_DRIVER[13]} for CUDA 13), or use --runtime onnxruntime or torch on a machine without a GPU")
    drv_major, drv_minor = driver_cuda // 1000, driver_cuda % 1000 // 10
    supported = f"the NVIDIA driver supports CUDA up to {drv_major}.{drv_minor}"
    if drv_major < 12:
        return (f"{supported} ({error}); cdul-rt's TensorRT runtime needs CUDA 12 or newer: update the driver to "
                f">= {MIN_DRIVER[12]}")
    if major is not None and major > drv_major:
        return (f"{supported}, but cuda-python {bindings} is built for CUDA {major} (needs driver >= "
                f"{MIN_DRIVER.get(major, 'newer')}); install the CUDA {drv_major} build: "
                f"`pip install 'cdul-rt[tensorrt-cu{drv_major}]'` (cuda-python {drv_major}.x), or update the driver")
    return f"{supported}, cuda-python {bindings or 'unknown'} ({error}); see `nvidia-smi`"


def device_info(index: int = 0) -> DeviceInfo:
    rt = cudart()
    err, n = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        reason = rt.cudaGetErrorString(err)[1]
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        derr, driver = rt.cudaDriverGetVersion()
        driver = int(driver) if derr == rt.cudaError_t.cudaSuccess else 0
        what = f"{getattr(err, 'name', err)}: {reason}"
        raise CdulError(f"CUDA cannot start: {driver_advice(what, driver, bindings_version())}")
    if n == 0:
        raise CdulError("no CUDA device is visible (check `nvidia-smi` and CUDA_VISIBLE_DEVICES); the TensorRT runtime "
                        "needs an NVIDIA GPU. Use --runtime onnxruntime or torch on this machine")
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
