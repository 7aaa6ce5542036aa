"""Runtimes behind one interface (Polygraphy style): a loader builds or loads, a runner infers.

Every runner of the fused labeler takes ``crops`` (float32 ``[k*(1+g^2), 3, S, S]``, normalised) and
``text_embeddings`` (float32 ``[C, D]``) and returns ``S_final``, ``S_global`` and ``S_ag`` (float32 ``[k, C]``)
plus ``image_embeddings`` (float32 ``[k, D]``, L2-normalised: each image's global view, from the same encoder call).
Runtimes are registered by name and imported lazily, so choosing ``onnxruntime`` never imports torch.
"""

from __future__ import annotations

from cdul_rt.errors import did_you_mean

RUNTIMES = {
    "torch": "cdul_rt.engines.torch",
    "onnxruntime": "cdul_rt.engines.onnxrt",
    "tensorrt": "cdul_rt.engines.trt",
    "auto": "cdul_rt.engines.auto",  # one of the above by the default rule (engines/auto.choose)
}


def check_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise did_you_mean(name, list(RUNTIMES), "runtime", f"Runtimes: {', '.join(RUNTIMES)}.")
    return name


def runtime_module(name: str):
    import importlib

    return importlib.import_module(RUNTIMES[check_runtime(name)])
