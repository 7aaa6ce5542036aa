"""Device strings and GPU runtime options shared by the runtimes (torch, onnxruntime, tensorrt).

- :func:`parse_device` turns ``--device`` (``cpu``, ``cuda``, ``cuda:1``) into a kind and an index, with clear errors.
- :func:`ort_providers` builds the onnxruntime provider list for a device and precision (the only provider picker):
  CUDA then CPU on a GPU, with the TensorRT execution provider first when asked for (``label --ort-tensorrt``:
  fp16, engine + timing caches on disk, optimization profile sized in images of 1+g^2 crops), failing when a GPU
  was asked for but ``onnxruntime-gpu`` is not installed (instead of silently running on the CPU).
- :func:`torch_cuda_check` says why torch cannot use a CUDA device.

Nothing here imports torch, onnxruntime or tensorrt at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdul_rt.errors import CdulError

DEVICE_KINDS = ("cpu", "cuda")
ORT_TRT, ORT_CUDA, ORT_CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
ORT_GPU_HINT = ("install onnxruntime-gpu instead of onnxruntime on the GPU machine "
                "(`pip uninstall onnxruntime && pip install onnxruntime-gpu`)")


@dataclass(frozen=True)
class Device:
    kind: str  # cpu | cuda
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(device: str) -> Device:
    """``cpu`` | ``cuda`` | ``cuda:N`` (also ``gpu`` / ``gpu:N`` as aliases of cuda)."""
    text = (device or "cpu").strip().lower()
    kind, _, index = text.partition(":")
    kind = "cuda" if kind == "gpu" else kind
    if kind not in DEVICE_KINDS:
        from cdul_rt.errors import did_you_mean

        raise did_you_mean(kind, DEVICE_KINDS, "device", "Use cpu, cuda or cuda:N.")
    if kind == "cpu":
        if index:
            raise CdulError(f"device {device!r}: the CPU takes no index; use --device cpu")
        return Device("cpu")
    if index and not index.isdigit():
        raise CdulError(f"device {device!r}: the CUDA device index must be a number, e.g. cuda:0")
    return Device("cuda", int(index or 0))


def trt_profile_string(shapes: dict[str, tuple[int, ...]]) -> str:
    """onnxruntime's TensorRT EP profile syntax: ``crops:10x3x224x224,text_embeddings:80x512``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in sorted(shapes.items()))


def ort_trt_options(device: Device, precision: str, cache_dir: Path, profile: dict | None = None,
                    workspace_gib: float = 4.0) -> dict[str, str]:
    """TensorRT EP options: fp16 via the EP's own flag (it builds from the graph it is given), engine and timing
    caches under ``cache_dir`` so the minutes-long build happens once per GPU, and an explicit profile when the
    graph has dynamic dimensions (``profile``: name -> (min, opt, max) shapes) so the engine is not rebuilt for
    every new batch size."""
    cache_dir = Path(cache_dir)
    opts = {
        "device_id": str(device.index),
        "trt_fp16_enable": "True" if precision == "fp16" else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir / "ort-trt-engines"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir / "ort-trt-timing"),
        "trt_max_workspace_size": str(int(workspace_gib * (1 << 30))),
    }
    if profile:
        for i, part in enumerate(("min", "opt", "max")):
            opts[f"trt_profile_{part}_shapes"] = trt_profile_string({n: s[i] for n, s in profile.items()})
    return opts


def ort_cuda_options(device: Device) -> dict[str, str]:
    # EXHAUSTIVE conv search pays off for the ResNet classifier and costs one slow first batch; the arena grows
    # by what is requested, not by powers of two, so a 10-crop batch does not reserve twice its memory.
    return {"device_id": str(device.index), "cudnn_conv_algo_search": "EXHAUSTIVE",
            "arena_extend_strategy": "kSameAsRequested"}


def ort_providers(device: str | Device, precision: str = "fp32", use_tensorrt: bool = False,
                  cache_dir: Path | None = None, profile: dict | None = None,
                  available: list[str] | None = None, wanted: list[str] | str | None = None) -> list:
    """The ``providers`` argument for ``onnxruntime.InferenceSession`` (names and (name, options) pairs): the one
    provider picker of cdul-rt.

    CPU for ``cpu``; for ``cuda[:N]`` (or ``gpu``) the CUDA provider, preceded by the TensorRT execution provider
    when ``use_tensorrt`` (``label --ort-tensorrt``), then the CPU for the few nodes no GPU provider takes. A GPU
    request that this onnxruntime cannot serve is an error, never a silent CPU run. ``wanted`` (names, or a comma
    list) overrides the choice, checked against what is installed. ``available`` defaults to
    ``onnxruntime.get_available_providers()``; pass it to decide without onnxruntime.
    """
    dev = parse_device(device) if isinstance(device, str) else device
    if available is None and (wanted or dev.kind != "cpu"):
        import onnxruntime

        available = list(onnxruntime.get_available_providers())
    if wanted:
        names = [p.strip() for p in (wanted.split(",") if isinstance(wanted, str) else wanted)]
        missing = [p for p in names if p not in available]
        if missing:
            raise CdulError(f"onnxruntime providers {missing} are not available here (available: {available})")
        return names
    if dev.kind == "cpu":
        if use_tensorrt:
            raise CdulError("--ort-tensorrt runs onnxruntime's TensorRT execution provider on a GPU; add --device cuda")
        return [ORT_CPU]
    if ORT_CUDA not in available:
        raise CdulError(f"--device {dev} needs onnxruntime's CUDA execution provider, but this onnxruntime only has "
                        f"{', '.join(available)}; {ORT_GPU_HINT}")
    providers: list = []
    if use_tensorrt:
        if ORT_TRT not in available:
            raise CdulError(f"--ort-tensorrt needs onnxruntime's TensorRT execution provider (onnxruntime-gpu with "
                            f"TensorRT's libraries installed); this onnxruntime has {', '.join(available)}. Drop "
                            "--ort-tensorrt to run on its CUDA provider, or use --runtime tensorrt")
        if cache_dir is None:
            from cdul_rt.cache import cache_dir as default_cache

            cache_dir = default_cache("ort-tensorrt")
        providers.append((ORT_TRT, ort_trt_options(dev, precision, cache_dir, profile)))
    providers.append((ORT_CUDA, ort_cuda_options(dev)))
    providers.append(ORT_CPU)  # for the few nodes no GPU provider takes
    return providers


def check_ort_tensorrt(runtime: str, device: str) -> None:
    """``label --ort-tensorrt`` is refused at once where it would be ignored (another runtime, the CPU)."""
    if runtime != "onnxruntime" or parse_device(device).kind != "cuda":
        raise CdulError(f"--ort-tensorrt is onnxruntime's TensorRT execution provider: use it with --runtime "
                        f"onnxruntime --device cuda (got --runtime {runtime} --device {device}; the native TensorRT "
                        "engine is --runtime tensorrt)")


def torch_cuda_check(device: str | Device) -> str | None:
    """None when torch can run on ``device``; otherwise the reason (torch without CUDA, no GPU, bad index)."""
    dev = parse_device(device) if isinstance(device, str) else device
    if dev.kind == "cpu":
        return None
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (no NVIDIA GPU, or its driver is missing or too old for this torch)"
    n = torch.cuda.device_count()
    if dev.index >= n:
        return f"cuda:{dev.index} does not exist; this machine has {n} CUDA device(s)"
    return None


def require_torch_cuda(device: str | Device) -> str:
    """The torch device string (``cpu``, ``cuda:N``) for ``--device``; a CdulError saying why when torch cannot use
    it (a CPU-only torch, no GPU, no such index). Accepts the ``gpu`` alias, which torch itself does not."""
    dev = parse_device(device) if isinstance(device, str) else device
    reason = torch_cuda_check(dev)
    if reason:
        raise CdulError(f"--device {device}: {reason}. Use --device cpu on this machine")
    return str(dev)
