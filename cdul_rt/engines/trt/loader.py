"""``--runtime tensorrt``: a labeler session from an artifact folder and the TensorRT engine built for it.

The artifact folder (``--engine-dir``, written by ``cdul-rt export``; without it the same cached export as
``--runtime onnxruntime``) holds the ONNX graphs and ``manifest.json``; engines live in its ``tensorrt/`` subfolder,
keyed by ONNX hash, TensorRT version, GPU, precision and profile. Finding or building them is the pipeline's step
(:func:`cdul_rt.prepare.prepare_request` calls :mod:`cdul_rt.engines.trt.build`), so moving the folder to another
GPU or upgrading TensorRT costs one build there instead of a crash. This runtime only opens an engine that exists
for the request, and says which command builds it when there is none. Torch is never imported.
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.engines.gpu import ort_providers
from cdul_rt.engines.request import RuntimeRequest, TrtOptions, as_request
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


def build_command(request: RuntimeRequest, folder: Path) -> str:
    """The ``label`` command whose prepare step builds the engine ``request`` runs (its build options included)."""
    import shlex

    opts = request.options
    extra = f" --trt-workspace {opts.workspace_gib:g}" if opts.workspace_gib != TrtOptions().workspace_gib else ""
    extra += f" --trt-typing {opts.typing}" if opts.typing else ""
    return (f"cdul-rt label IMAGES --runtime tensorrt --engine-dir {shlex.quote(str(folder))} "
            f"--device {request.device} --precision {request.precision}{extra}")


def labeler_plan(request: RuntimeRequest, folder: Path, device: int) -> Path:
    """The labeler engine built for ``request`` in the folder's ``tensorrt/``; a CdulError naming the command that
    builds it when there is none (or only a stale one). Builds nothing."""
    from cdul_rt.engines.trt.build import ENGINE_FOLDER, find_engine, labeler_build

    src, build = labeler_build(request, folder, device)
    found = find_engine(src, folder / ENGINE_FOLDER, build)
    if found.plan is None:
        why = found.reason or f"no {found.stem}.plan"
        raise CdulError(f"no usable TensorRT labeler engine in {folder / ENGINE_FOLDER} for this request ({why}); "
                        "the TensorRT runtime runs engines that exist and does not build them. Build it with "
                        f"`{build_command(request, folder)}` (its first run builds the engine, minutes), or open it "
                        "through cdul_rt.pipeline.open_session / cdul_rt.Labeler.open, which build it first")
    return found.plan


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
    plan = labeler_plan(req, folder, device)
    runner = TrtLabelerRunner(plan, grid=req.grid, image_size=manifest.image_size,
                              embed_dim=manifest.embed_dim, **req.aggregation.numbers(), device=device,
                              chunk_images=req.options.chunk_images)
    # texts: text.onnx on the CPU (once per vocabulary); images: the labeler engine's image_embeddings, on the GPU
    texts = folder_encoders(folder, manifest, ort_providers("cpu")).get("encode_texts")
    return LabelerSession(runner, text, manifest.preprocess_config(), manifest.model.display,
                          manifest.weights_hash, req.precision, "tensorrt", encode_texts=texts)
