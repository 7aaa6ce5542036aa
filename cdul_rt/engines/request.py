"""What a runtime receives: one typed request, built once by the pipeline (:func:`cdul_rt.prepare.prepare_request`).

A runtime's ``open_labeler(request, vocab)`` reads nothing else: the model as asked (:class:`ModelRequest`,
resolved to a :class:`~cdul_rt.presets.ModelSpec` by the runtimes that load weights), the precision and device, the
artifact folder (graph runtimes; already found or exported), the crops and the aggregation, and the runtime's own
options as a typed object (:class:`TorchOptions`, :class:`OrtOptions`, :class:`TrtOptions`), each field wired to a
``cdul-rt label`` flag. Pure (no torch, no onnxruntime): the request is built before any runtime is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from cdul_rt.aggregation import Aggregation
from cdul_rt.errors import CdulError
from cdul_rt.presets import ModelRequest


@dataclass(frozen=True)
class TorchOptions:
    compile: bool = False  # --compile: torch.compile the visual encoder (minutes once per process)


@dataclass(frozen=True)
class OrtOptions:
    tensorrt_ep: bool = False  # --ort-tensorrt: the labeler on onnxruntime's TensorRT execution provider


TRT_TYPINGS = ("flag", "strong")


@dataclass(frozen=True)
class TrtOptions:
    workspace_gib: float = 4.0  # --trt-workspace: builder workspace limit (as `export --trt-workspace`)
    typing: str | None = None  # --trt-typing: flag | strong; None: flag on TRT 10, strong on TRT 11
    chunk_images: int | None = None  # --trt-chunk-images: images per engine run inside a call (None: 2 chunks)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.workspace_gib) and self.workspace_gib > 0):
            raise CdulError(f"--trt-workspace must be a number of GiB > 0, got {self.workspace_gib}")
        if self.typing not in (None, *TRT_TYPINGS):
            raise CdulError(f"--trt-typing must be one of {', '.join(TRT_TYPINGS)}, got {self.typing!r}")
        if self.chunk_images is not None and self.chunk_images < 1:
            raise CdulError(f"--trt-chunk-images must be >= 1 (images per engine run), got {self.chunk_images}")


RuntimeOptions = Union[TorchOptions, OrtOptions, TrtOptions]
# each runtime's options type; `auto` is resolved to one of these before a request is built
OPTIONS = {"torch": TorchOptions, "onnxruntime": OrtOptions, "tensorrt": TrtOptions}
TRT_FLAGS = {"trt_workspace": 4.0, "trt_typing": None, "trt_chunk_images": None}  # label's --trt-* and defaults


def runtime_options(runtime: str, device: str, compile: bool = False, ort_tensorrt: bool = False,
                    trt_workspace: float = 4.0, trt_typing: str | None = None,
                    trt_chunk_images: int | None = None) -> RuntimeOptions:
    """``label``'s runtime flags as ``runtime``'s typed options. ``--ort-tensorrt`` and the ``--trt-*`` flags
    with another runtime are refused (they would be ignored); ``--compile`` stays ignored by the graph runtimes,
    as it always was (``label --compile`` without ``--runtime`` may resolve to onnxruntime)."""
    from cdul_rt.engines import check_runtime

    check_runtime(runtime)  # an unknown name: did you mean ...
    if ort_tensorrt:
        from cdul_rt.engines.gpu import check_ort_tensorrt

        check_ort_tensorrt(runtime, device)
    trt = {"trt_workspace": trt_workspace, "trt_typing": trt_typing, "trt_chunk_images": trt_chunk_images}
    set_here = [f"--{k.replace('_', '-')}" for k, v in trt.items() if v != TRT_FLAGS[k]]
    if set_here and runtime != "tensorrt":
        raise CdulError(f"{', '.join(set_here)} configure the native TensorRT runtime (its engine build and runs): use them with "
                        f"--runtime tensorrt (got --runtime {runtime})")
    if runtime == "torch":
        return TorchOptions(compile)
    if runtime == "onnxruntime":
        return OrtOptions(ort_tensorrt)
    if runtime == "tensorrt":
        return TrtOptions(trt_workspace, trt_typing, trt_chunk_images)
    raise CdulError(f"a runtime's options need a resolved runtime ({', '.join(OPTIONS)}), got {runtime!r}")


@dataclass(frozen=True)
class RuntimeRequest:
    """Everything one runtime needs to open a labeler session (the vocabulary travels beside it)."""

    runtime: str  # torch | onnxruntime | tensorrt
    model: ModelRequest
    precision: str
    device: str
    engine_dir: Path | None  # the artifact folder a graph runtime opens (torch: None)
    grid: int
    aggregation: Aggregation
    template: str
    batch_size: int  # images per call (sizes onnxruntime's TensorRT-EP profile)
    options: RuntimeOptions

    def __post_init__(self) -> None:
        want = OPTIONS.get(self.runtime)
        if want is None:
            raise CdulError(f"a runtime request needs a resolved runtime ({', '.join(OPTIONS)}), got "
                            f"{self.runtime!r}")
        if not isinstance(self.options, want):
            raise CdulError(f"--runtime {self.runtime} takes {want.__name__}, got {type(self.options).__name__}")

    @property
    def crops_per_image(self) -> int:
        return 1 + self.grid ** 2


def as_request(request: Any) -> RuntimeRequest:
    """``request`` itself, or the request of a :class:`~cdul_rt.pipeline.LabelConfig` given instead (older callers
    and tests open a runtime with the label options; they name the folder themselves)."""
    if isinstance(request, RuntimeRequest):
        return request
    return request.runtime_request()
