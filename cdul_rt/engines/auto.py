"""The default path: which runtime and precision ``cdul-rt label`` runs when no speed flag is given.

One rule, used by the ``label`` command, :class:`cdul_rt.pipeline.LabelConfig` (so the Python API too),
``--runtime auto`` and ``cdul-rt bench``'s default row. It depends only on the machine and the install (CPU
flags, the device asked for, which runtimes are importable), never on a timing taken at run time, so two runs,
or the CLI and the Python API, with the same flags take the same path.

Precision (issue 18 item 4): exact (fp32) until a faster precision is shown to keep label quality within
:data:`QUALITY_MARGIN` on ``cdul-rt bench --quality`` (the synthetic world with the shipped tiny CLIP, at its own
logit scale and at real CLIP's 100; numbers in BENCHMARKS.md "Label quality by precision"):

- torch bf16 and onnxruntime int8 keep the mAP of every mode within 0.2 points but change the label set (the
  classes with S_final >= 0.5) of 6.0 % and 3.7 % of the images at logit scale 100: outside the margin. They stay
  available with ``--precision bf16`` / ``int8``.
- the fp16 ONNX graph (norms, softmax and the scoring head kept fp32) keeps every label set at scale 100 and 99.7 %
  at 13.1: within the margin. On CPU it is slower than fp32 (no fp16 matrix units), so the CPU default stays fp32;
  on CUDA the graph runtimes (TensorRT, onnxruntime-gpu) default to it. torch fp16 on CUDA casts everything,
  norms included, and has not been measured (no GPU here): torch stays fp32 on CUDA until ``bench --quality``
  shows ``torch/fp16/cuda`` within the margin.

Runtime (item 6): among the paths the margin allows, the fastest measured one that is installed: on CPU
onnxruntime fp32 (same scores as torch fp32 to ~1e-7; faster end to end in ``cdul-rt bench``, BENCHMARKS.md
"Speed (CPU)"), on CUDA TensorRT, then onnxruntime-gpu, then torch. The onnxruntime path exports the model to ONNX on first use into the cache
(``CDUL_RT_CACHE``/engines; once per model and options) and never imports torch afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cdul_rt.errors import CdulError

BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
# what "label quality within the margin" means, against torch fp32, at both logit scales of `bench --quality`
QUALITY_MARGIN = {"map_points": 0.5, "top1_agreement": 0.99, "labels_agreement": 0.99}
# (runtime, precision) shown within QUALITY_MARGIN (fp32 is exact by definition); the rule picks only from these
WITHIN_MARGIN = frozenset({("torch", "fp32"), ("onnxruntime", "fp32"), ("tensorrt", "fp32"),
                           ("onnxruntime", "fp16"), ("tensorrt", "fp16")})
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class Capabilities:
    cpu_flags: frozenset[str]
    cpu_name: str = ""
    cuda: bool = False
    onnxruntime: bool = False  # the onnxruntime package and cdul-rt's onnxrt runtime both importable
    tensorrt: bool = False
    onnxruntime_cuda: bool = False  # onnxruntime-gpu with its CUDAExecutionProvider

    @property
    def bf16(self) -> bool:
        return bool(self.cpu_flags & BF16_FLAGS)

    @property
    def int8(self) -> bool:
        return bool(self.cpu_flags & INT8_FLAGS)


@dataclass(frozen=True)
class Candidate:
    runtime: str
    precision: str
    device: str = "cpu"

    @property
    def key(self) -> str:
        return f"{self.runtime}/{self.precision}/{self.device}"

    @property
    def within_margin(self) -> bool:
        return (self.runtime, self.precision) in WITHIN_MARGIN


def parse_cpuinfo(text: str) -> tuple[frozenset[str], str]:
    """(flags, model name) of the first processor in a /proc/cpuinfo text."""
    flags: frozenset[str] = frozenset()
    name = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and not name:
            name = value.strip()
    return flags, name


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _ort_cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def detect(cuda: bool = True) -> Capabilities:
    """What this machine offers (CPU flags from /proc/cpuinfo, runtimes from their packages; with ``cuda``, the
    GPU from torch and onnxruntime's providers). ``cuda=False`` imports neither torch nor onnxruntime."""
    try:
        flags, name = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: ask torch (it knows AVX512, not bf16 support)
        flags, name = frozenset(), ""
    if not flags:
        import torch

        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            flags = frozenset({"avx512_bf16"})
    onnxrt = _importable("onnxruntime") and _importable("cdul_rt.engines.onnxrt.loader")
    has_cuda = False
    if cuda and _importable("torch"):
        import torch

        has_cuda = torch.cuda.is_available()
    return Capabilities(flags, name, has_cuda, onnxrt, _importable("tensorrt"),
                        onnxrt and has_cuda and _ort_cuda())


def default_precision(runtime: str, device: str) -> str:
    """fp16 for the graph runtimes on CUDA (the fp16 graph is within the margin), else exact fp32."""
    return "fp16" if device.startswith("cuda") and runtime in ("tensorrt", "onnxruntime") else "fp32"


def _runtime_for(precision: str, device: str, caps: Capabilities) -> str:
    """The runtime the rule gives for ``precision`` (``auto``: the fastest within the margin) on ``device``."""
    cuda = device.startswith("cuda")
    graph = ("tensorrt" if cuda and caps.tensorrt else
             "onnxruntime" if (caps.onnxruntime_cuda if cuda else caps.onnxruntime) else None)
    if precision in ("auto", "fp32"):
        return graph or "torch"
    if precision == "bf16":
        return "torch"
    if precision == "int8":
        if not caps.onnxruntime:
            raise CdulError("--precision int8 runs the onnxruntime graph; install it: pip install 'cdul-rt[onnx]'")
        return "onnxruntime"
    if precision == "fp16":
        if cuda:
            return graph or "torch"
        if not caps.onnxruntime:
            raise CdulError("--precision fp16 on the CPU runs the onnxruntime graph (torch has no fast CPU fp16); "
                            "install it: pip install 'cdul-rt[onnx]', or use --precision fp32")
        return "onnxruntime"
    raise CdulError(f"--precision must be one of {', '.join(PRECISIONS)} or auto, got {precision!r}")


def choose(runtime: str | None = "auto", precision: str | None = "auto", device: str = "cpu",
           engine_dir: str | os.PathLike | None = None, caps: Capabilities | None = None) -> Candidate:
    """The path ``label`` takes for these flags; ``None`` or ``"auto"`` = not given.

    A given runtime and precision are kept as given (the runtime's loader checks them). A missing runtime is the
    rule's for the precision (with ``engine_dir``: the graph runtime that runs the folder); a missing precision is
    the folder's (``engine_dir`` with a graph runtime), else :func:`default_precision`.
    """
    runtime = runtime or "auto"
    precision = precision or "auto"
    device = _cuda_spelling(device)
    if runtime == "auto" and engine_dir:  # a folder and no runtime named: run the folder (torch would ignore it)
        caps = caps or detect(cuda=device.startswith("cuda"))
        runtime = "tensorrt" if device.startswith("cuda") and caps.tensorrt else "onnxruntime"
    elif runtime == "auto":
        caps = caps or detect(cuda=device.startswith("cuda"))
        runtime = _runtime_for(precision, device, caps)
    if precision == "auto":
        precision = _folder_precision(engine_dir, runtime) or default_precision(runtime, device)
    return Candidate(runtime, precision, device)


def _cuda_spelling(device: str) -> str:
    """``gpu[:N]`` (an alias the runtimes accept) read as ``cuda[:N]`` for the rule; other spellings unchanged."""
    kind, sep, index = (device or "cpu").strip().partition(":")
    return f"cuda{sep}{index}" if kind.lower() in ("gpu", "cuda") else device


def label_options(opts: dict, given: set[str]) -> dict:
    """``label``'s keyword options (``None`` = not given) completed as ``cdul-rt label`` and ``Labeler.open`` both
    do: the rule's runtime, then the options an ``engine_dir`` supplies (``given``: the ones the user set), then
    the rule's precision."""
    from cdul_rt.artifacts.folder import label_options_from_folder

    device = opts.get("device") or "cpu"
    runtime = choose(opts.get("runtime"), opts.get("precision"), device, opts.get("engine_dir")).runtime
    opts = label_options_from_folder({**opts, "runtime": runtime}, given)
    return {**opts, "precision": choose(runtime, opts.get("precision"), device, opts.get("engine_dir")).precision}


def _folder_precision(engine_dir, runtime: str) -> str | None:
    from cdul_rt.artifacts.folder import FOLDER_RUNTIMES

    if not engine_dir or runtime not in FOLDER_RUNTIMES:
        return None
    from cdul_rt.artifacts.manifest import read_manifest

    try:
        return read_manifest(Path(engine_dir)).precision
    except CdulError:
        return None  # the runtime's loader reports the damaged folder with its own message


def open_labeler(cfg, vocab):
    """``--runtime auto``: the rule's runtime and precision (what ``label`` runs without speed flags)."""
    from dataclasses import replace

    from cdul_rt.engines import runtime_module

    cand = choose(cfg.runtime, cfg.precision, cfg.device, cfg.engine_dir)
    return runtime_module(cand.runtime).open_labeler(replace(cfg, runtime=cand.runtime, precision=cand.precision),
                                                      vocab)
