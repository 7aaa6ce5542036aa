"""``--runtime tensorrt``: a labeler session from an artifact folder, building (or rebuilding) its engine on first use.

The artifact folder (``--engine-dir``, written by ``cdul-rt export``; without it the same cached export as
``--runtime onnxruntime``, which :mod:`cdul_rt.prepare` finds or makes before the runtime opens it) holds the ONNX graphs and ``manifest.json``; engines live in its
``tensorrt/`` subfolder, keyed by ONNX hash, TensorRT version, GPU, precision and profile. A missing or stale engine
is built here with a message, so moving the folder to another GPU or upgrading TensorRT costs one build instead of
a crash. Torch is never imported when the folder exists.
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.engines.gpu import ort_providers
from cdul_rt.engines.session import LabelerSession
from cdul_rt.errors import CdulError


def check_request(cfg) -> int:
    """Fail early, before touching TensorRT, on options this runtime cannot honour; returns the CUDA index."""
    from cdul_rt.engines.gpu import parse_device

    dev = parse_device(cfg.device)
    if dev.kind != "cuda":
        raise CdulError(f"--runtime tensorrt runs on an NVIDIA GPU; use --device cuda (got --device {cfg.device}), "
                        "or --runtime onnxruntime / torch on the CPU")
    if cfg.precision not in ("fp16", "fp32"):
        raise CdulError(f"--runtime tensorrt builds fp16 or fp32 engines, got --precision {cfg.precision}")
    return dev.index


def check_available(cfg) -> int:
    """What can be refused before a folder exists or an engine is built (the device, TensorRT installed); returns
    the CUDA index. :func:`cdul_rt.prepare.prepare_label_config` asks first, before any export."""
    from cdul_rt.engines.trt.builder import import_tensorrt

    device = check_request(cfg)
    import_tensorrt()  # a CdulError naming the pip extra when TensorRT is missing, before any export or build
    return device


def labeler_engine(cfg, folder: Path, device: int):
    """Build or reuse the labeler engine for ``cfg`` from the artifact folder; returns a :class:`BuiltEngine`."""
    from cdul_rt.engines.trt.builder import import_tensorrt, resolve_typing, trt_major
    from cdul_rt.engines.trt.build import ENGINE_FOLDER, TrtBuildConfig, available_precisions, build_engine, plan_sources

    trt = import_tensorrt()
    extra = cfg.extra or {}
    folders = [folder, *map(Path, extra.get("extra_dirs", ()))]
    typing = resolve_typing(trt_major(trt.__version__), cfg.precision, extra.get("trt_typing"),
                            available_precisions(folders))
    (src,) = plan_sources(folders, ("labeler",), cfg.precision, typing)
    build = TrtBuildConfig(precision=cfg.precision, typing=typing, device=device,
                           workspace_gib=float(extra.get("workspace_gib", 4.0)))
    return build_engine(src, Path(extra.get("trt_engine_dir") or folder / ENGINE_FOLDER), build)


def open_labeler(cfg, vocab) -> LabelerSession:
    from cdul_rt.artifacts.folder import check_request as check_artifacts
    from cdul_rt.artifacts.manifest import verify_artifacts
    from cdul_rt.engines.onnxrt.loader import artifact_folder, class_embeddings, folder_encoders
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    device = check_available(cfg)
    folder = artifact_folder(cfg, "tensorrt")
    manifest = verify_artifacts(folder)  # every file (size + sha256) before any runtime starts
    # same model, weights, grid and mode; the precision may differ (TRT 10 builds fp16 from the fp32 graph)
    check_artifacts(manifest, folder, cfg.model, cfg.pretrained, cfg.weights, manifest.precision, cfg.grid, cfg.mode)
    text = class_embeddings(folder, manifest, vocab, cfg.template)
    built = labeler_engine(cfg, folder, device)
    runner = TrtLabelerRunner(built.plan, grid=cfg.grid, image_size=manifest.image_size,
                              embed_dim=manifest.embed_dim, **cfg.aggregation.numbers(), device=device,
                              chunk_images=(cfg.extra or {}).get("chunk_images"))
    # texts: text.onnx on the CPU (once per vocabulary); images: the labeler engine's image_embeddings, on the GPU
    texts = folder_encoders(folder, manifest, ort_providers("cpu")).get("encode_texts")
    return LabelerSession(runner, text, manifest.preprocess_config(), manifest.model.display,
                          manifest.weights_hash, cfg.precision, "tensorrt", encode_texts=texts)
