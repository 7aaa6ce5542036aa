"""``--runtime tensorrt``: a labeler session from an artifact folder, building (or rebuilding) its engine on first use.

The artifact folder (``--engine-dir``, written by ``cdul-rt export``) holds the ONNX graphs and ``manifest.json``;
engines live in its ``tensorrt/`` subfolder, keyed by ONNX hash, TensorRT version, GPU, precision and profile. A
missing or stale engine is built here with a message, so moving the folder to another GPU or upgrading TensorRT
costs one build instead of a crash. Torch is never imported.
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.engines.session import LabelerSession
from cdul_rt.errors import CdulError


def _check_request(cfg) -> int:
    """Fail early, before touching TensorRT, on options this runtime cannot honour; returns the CUDA index."""
    from cdul_rt.engines.gpu import parse_device

    dev = parse_device(cfg.device)
    if dev.kind != "cuda":
        raise CdulError(f"--runtime tensorrt runs on an NVIDIA GPU; use --device cuda (got --device {cfg.device}), "
                        "or --runtime onnxruntime / torch on the CPU")
    if cfg.precision not in ("fp16", "fp32"):
        raise CdulError(f"--runtime tensorrt builds fp16 or fp32 engines, got --precision {cfg.precision}")
    if not cfg.engine_dir:
        raise CdulError("--runtime tensorrt needs --engine-dir: an artifact folder from `cdul-rt export` "
                        "(add --precision fp16 there for TensorRT 11); engines are built into it on first use")
    return dev.index


def _text_embeddings(folder: Path, manifest, vocab, template: str):
    from cdul_rt.export.textstore import load_text_embeddings

    emb = load_text_embeddings(folder, vocab, template, manifest.embed_dim, manifest.model["weights_hash"])
    if emb is None:
        raise CdulError(f"{folder} has no text embeddings for vocabulary {vocab.name!r} with template "
                        f"{template!r}; add them with `cdul-rt export --classes {vocab.name} --out {folder}` "
                        "(any runtime can then reuse them)")
    return emb


def open_labeler(cfg, vocab) -> LabelerSession:
    from cdul_rt.engines.trt.builder import import_tensorrt
    from cdul_rt.engines.trt.runner import TrtLabelerRunner
    from cdul_rt.export.manifest import read_manifest
    from cdul_rt.export.tensorrt import ENGINE_FOLDER, TrtBuildConfig, build_engine, plan_sources
    from cdul_rt.preprocess import PreprocessConfig

    device = _check_request(cfg)
    trt = import_tensorrt()  # a CdulError naming the pip extra when TensorRT is missing
    folder = Path(cfg.engine_dir)
    manifest = read_manifest(folder)
    lab = manifest.labeler
    if int(lab["grid"]) != cfg.grid or lab["mode"] != cfg.mode:
        raise CdulError(f"{folder} was exported with --grid {lab['grid']} --mode {lab['mode']}, this run asks for "
                        f"--grid {cfg.grid} --mode {cfg.mode}; re-export with those options or change them")
    text = _text_embeddings(folder, manifest, vocab, cfg.template)
    extra = cfg.extra or {}
    build = TrtBuildConfig(precision=cfg.precision, typing=extra.get("trt_typing"), device=device,
                           workspace_gib=float(extra.get("workspace_gib", 4.0)))
    from cdul_rt.engines.trt.builder import choose_typing, trt_major

    typing = choose_typing(trt_major(trt.__version__), cfg.precision, build.typing)
    (src,) = plan_sources([folder, *map(Path, extra.get("extra_dirs", ()))], ("labeler",), cfg.precision, typing)
    built = build_engine(src, Path(extra.get("trt_engine_dir") or folder / ENGINE_FOLDER), build)
    runner = TrtLabelerRunner(built.plan, grid=cfg.grid, image_size=manifest.image_size,
                              embed_dim=manifest.embed_dim, zeta=cfg.zeta, lam=cfg.lam, device=device,
                              chunk_images=extra.get("chunk_images"))
    return LabelerSession(runner, text, PreprocessConfig.from_dict(manifest.preprocess), manifest.model["display"],
                          manifest.model["weights_hash"], cfg.precision, "tensorrt")
