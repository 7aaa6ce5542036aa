"""``--runtime auto``: the fastest runtime and precision that passes parity on this machine.

Candidates come from the hardware (bf16 needs AMX or AVX512-BF16 in the CPU flags, int8 ONNX needs VNNI and is
exported on first use, CUDA needs a GPU), ordered by what ``cdul-rt bench`` measured on this machine when it has
been run (recorded in the cache), else by the order measured on such CPUs (BENCHMARKS.md). The first candidate
whose ``S_final`` on a probe image stays within :data:`PARITY_TOL` of the fp32 torch reference is used; the
others are skipped with their reason.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError

PARITY_TOL = 1e-2  # max |S_final - S_final(fp32 torch)| accepted (issue 6)
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})


@dataclass(frozen=True)
class Capabilities:
    cpu_flags: frozenset[str]
    cpu_name: str = ""
    cuda: bool = False
    onnxruntime: bool = False  # the onnxruntime package and cdul-rt's onnxrt runtime both importable
    tensorrt: bool = False

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


def detect() -> Capabilities:
    """What this machine offers (CPU flags from /proc/cpuinfo, CUDA from torch, runtimes from their packages)."""
    try:
        flags, name = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: ask torch (it knows AVX512, not bf16 support)
        flags, name = frozenset(), ""
    if not flags:
        import torch

        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            flags = frozenset({"avx512_bf16"})
    import torch

    onnxrt = _importable("onnxruntime") and _importable("cdul_rt.engines.onnxrt.loader")
    return Capabilities(flags, name, torch.cuda.is_available(), onnxrt, _importable("tensorrt"))


def candidates(caps: Capabilities, precision: str = "auto") -> list[Candidate]:
    """Fastest first, as measured on such machines (issue 6 table: torch bf16 > onnxruntime int8 > torch fp32).

    onnxruntime fp32/fp16 come after torch fp32, which always passes parity: they are only tried first when
    ``cdul-rt bench`` measured them faster here (:func:`rank`), since their first use exports the model.
    """
    out: list[Candidate] = []
    if caps.cuda:
        if caps.tensorrt:
            out.append(Candidate("tensorrt", "fp16", "cuda"))
        out.append(Candidate("torch", "fp16", "cuda"))
    if caps.bf16:
        out.append(Candidate("torch", "bf16"))
    if caps.onnxruntime and caps.int8:
        out.append(Candidate("onnxruntime", "int8"))
    out.append(Candidate("torch", "fp32"))
    if caps.onnxruntime:
        out += [Candidate("onnxruntime", "fp32"), Candidate("onnxruntime", "fp16")]
    if precision != "auto":
        out = [c for c in out if c.precision == precision]
        if not out:
            raise CdulError(f"--runtime auto found no runtime for --precision {precision} on this machine; "
                            "use --precision auto or name a --runtime")
    return out


def rank(cands: list[Candidate], measured: dict[str, float]) -> list[Candidate]:
    """Measured candidates first, fastest first; unmeasured ones keep their static order after them."""
    known = sorted((c for c in cands if c.key in measured), key=lambda c: -measured[c.key])
    return known + [c for c in cands if c.key not in measured]


# -- measurements recorded by `cdul-rt bench` -------------------------------------------------------------------
def hardware_key(caps: Capabilities) -> str:
    from cdul_rt.cache import json_key

    return json_key({"cpu": caps.cpu_name, "flags": sorted(caps.cpu_flags), "cores": os.cpu_count(),
                     "cuda": caps.cuda})


def _measure_file(caps: Capabilities) -> Path:
    from cdul_rt.cache import cache_dir

    return cache_dir("bench") / f"auto-{hardware_key(caps)}.json"


def record_measurements(caps: Capabilities, model: str, images_per_s: dict[str, float]) -> Path:
    """Store end-to-end images/s of parity-passing candidates (keys ``runtime/precision/device``) for ``model``."""
    path = _measure_file(caps)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[model] = images_per_s
    path.write_text(json.dumps(data, indent=2))
    return path


def measured(caps: Capabilities, model: str) -> dict[str, float]:
    path = _measure_file(caps)
    try:
        return dict(json.loads(path.read_text()).get(model, {}))
    except (OSError, ValueError):
        return {}


# -- choosing at labeling time ----------------------------------------------------------------------------------
def _probe_crops(cfg, preprocess) -> np.ndarray:
    """Normalised crops of the first readable image of the input (a generated picture if none reads)."""
    from cdul_rt.bench.images import photo_like
    from cdul_rt.crops import image_crops
    from cdul_rt.decode import load_crops
    from cdul_rt.imageio import iter_images
    from cdul_rt.preprocess import normalize_batch

    for _, path in zip(range(3), iter_images(cfg.input)):
        item = load_crops(path, cfg.grid, preprocess, cfg.max_pixels)
        if item.crops is not None:
            return normalize_batch(item.crops, preprocess)
    img = photo_like(320, 240, np.random.default_rng(0))
    return normalize_batch(image_crops(img, cfg.grid, preprocess), preprocess)


def s_final(runner, crops: np.ndarray, text: np.ndarray) -> np.ndarray:
    with runner:
        return runner.infer({"crops": crops, "text_embeddings": text})["S_final"]


def _open_candidate(cand: Candidate, cfg, vocab, reference):
    from cdul_rt.engines import runtime_module
    from cdul_rt.engines.session import LabelerSession
    from cdul_rt.engines.torch.loader import torch_encoders
    from cdul_rt.engines.torch.runner import TorchLabelerRunner

    if cand.runtime == "torch":  # share the reference's loaded CLIP: the runner casts a copy of its weights
        bundle = reference.runner.bundle
        runner = TorchLabelerRunner(bundle, grid=cfg.grid, mode=cfg.mode, zeta=cfg.zeta, lam=cfg.lam,
                                    precision=cand.precision, device=cand.device, compile=getattr(cfg, "compile", False))
        return LabelerSession(runner, reference.text_embeddings, reference.preprocess, reference.model,
                              reference.weights_hash, cand.precision, "torch", **torch_encoders(bundle, runner))
    sub = replace(cfg, runtime=cand.runtime, precision=cand.precision, device=cand.device)
    return runtime_module(cand.runtime).open_labeler(sub, vocab)


def open_labeler(cfg, vocab):
    """Open the first candidate that passes parity; record the choice and the reasons for skipping others."""
    from cdul_rt.engines.torch.loader import open_labeler as open_torch

    caps = detect()
    reference = open_torch(replace(cfg, runtime="torch", precision="fp32", device="cpu", compile=False), vocab)
    cands = rank(candidates(caps, cfg.precision), measured(caps, reference.model))
    probe = _probe_crops(cfg, reference.preprocess)
    ref_scores = None
    skipped: list[str] = []
    for cand in cands:
        if cand == Candidate("torch", "fp32"):
            session, diff = reference, 0.0
        else:
            try:
                session = _open_candidate(cand, cfg, vocab, reference)
                if ref_scores is None:
                    ref_scores = s_final(reference.runner, probe, reference.text_embeddings)
                diff = float(np.abs(s_final(session.runner, probe, session.text_embeddings) - ref_scores).max())
            except CdulError as exc:
                skipped.append(f"{cand.key}: {exc}")
                continue
            if diff > PARITY_TOL:
                skipped.append(f"{cand.key}: S_final differs by {diff:.2g} > {PARITY_TOL:g} from fp32")
                continue
        session.auto_choice = {"chosen": cand.key, "parity": diff, "skipped": skipped}
        if cfg.progress:
            print(f"runtime auto: {cand.key} (S_final within {diff:.1e} of fp32 on a probe image)"
                  + "".join(f"; skipped {s}" for s in skipped), file=sys.stderr)
        return session
    raise CdulError("runtime auto: no runtime passed parity: " + "; ".join(skipped))  # fp32 always passes
