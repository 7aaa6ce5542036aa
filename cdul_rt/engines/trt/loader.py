"""``--runtime tensorrt``: a labeler session from an artifact folder, building (or rebuilding) its engine on first use.

The artifact folder (``--engine-dir``, written by ``cdul-rt export``; without it the same cached export as
``--runtime onnxruntime``, which :mod:`cdul_rt.prepare` finds or makes before the runtime opens it) holds the ONNX
graphs and ``manifest.json``; engines live in its ``tensorrt/`` subfolder, keyed by ONNX hash, TensorRT version, GPU, precision and profile. A missing or stale engine
is built here with a message, so moving the folder to another GPU or upgrading TensorRT costs one build instead of
a crash. Torch is never imported when the folder exists.
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.engines.gpu import ort_providers
from cdul_rt.engines.request import RuntimeRequest, as_request
from cdul_rt.engines.session import LabelerSession
from cdul_rt.errors import CdulError


def check_request(request: RuntimeRequest) -> int:
    """Fail early, before touching TensorRT, on options this runtime cannot honour; returns the CUDA index."""
    from cdul_rt.engines.gpu import parse_device

    dev = parse_device(request.device)
    if dev.kind != "cuda":
        raise CdulError(f"--runtime tensorrt runs on an NVIDIA GPU; use --device cuda (got --device {request.device}), "
                        "or --runtime onnxruntime / torch on the CPU")
    if request.precision not in ("fp16", "fp32"):
        raise CdulError(f"--runtime tensorrt builds fp16 or fp32 engines, got --precision {request.precision}")
    return dev.index


def check_available(request: RuntimeRequest) -> int:
    """What can be refused before a folder exists or an engine is built (the device, TensorRT installed); returns
    the CUDA index. :func:`cdul_rt.prepare.prepare_request` asks first, before any export."""
    from cdul_rt.engines.trt.builder import import_tensorrt

    device = check_request(request)
    import_tensorrt()  # a CdulError naming the pip extra when TensorRT is missing, before any export or build
    return device


def labeler_engine(request: RuntimeRequest, folder: Path, device: int):
    """Build or reuse the labeler engine from the artifact folder (into its ``tensorrt/``) with the request's
    :class:`TrtOptions` (workspace, typing); returns a :class:`BuiltEngine`."""
    from cdul_rt.engines.trt.build import ENGINE_FOLDER, TrtBuildConfig, available_precisions, build_engine, plan_sources
    from cdul_rt.engines.trt.builder import import_tensorrt, resolve_typing, trt_major

    trt = import_tensorrt()
    options = request.options
    typing = resolve_typing(trt_major(trt.__version__), request.precision, options.typing,
                            available_precisions([folder]))
    (src,) = plan_sources([folder], ("labeler",), request.precision, typing)
    build = TrtBuildConfig(precision=request.precision, typing=typing, device=device,
                           workspace_gib=float(options.workspace_gib))
    return build_engine(src, folder / ENGINE_FOLDER, build)


def open_labeler(request: RuntimeRequest, vocab) -> LabelerSession:
    """``--runtime tensorrt`` (``request``: a :class:`RuntimeRequest` with :class:`TrtOptions`, or label options
    naming their folder)."""
    from cdul_rt.artifacts.folder import check_request as check_artifacts
    from cdul_rt.artifacts.manifest import verify_artifacts
    from cdul_rt.engines.onnxrt.loader import artifact_folder, class_embeddings, folder_encoders
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    req = as_request(request)
    device = check_available(req)
    folder = artifact_folder(req)
    manifest = verify_artifacts(folder)  # every file (size + sha256) before any runtime starts
    # same model, weights, grid and mode; the precision may differ (TRT 10 builds fp16 from the fp32 graph)
    check_artifacts(manifest, folder, req.model, manifest.precision, req.grid, req.aggregation.mode)
    text = class_embeddings(folder, manifest, vocab, req.template)
    built = labeler_engine(req, folder, device)
    runner = TrtLabelerRunner(built.plan, grid=req.grid, image_size=manifest.image_size,
                              embed_dim=manifest.embed_dim, **req.aggregation.numbers(), device=device,
                              chunk_images=req.options.chunk_images)
    # texts: text.onnx on the CPU (once per vocabulary); images: the labeler engine's image_embeddings, on the GPU
    texts = folder_encoders(folder, manifest, ort_providers("cpu")).get("encode_texts")
    return LabelerSession(runner, text, manifest.preprocess_config(), manifest.model.display,
                          manifest.weights_hash, req.precision, "tensorrt", encode_texts=texts)
