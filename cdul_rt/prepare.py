"""Before a runtime opens: find or make the artifact folder a graph runtime runs, and the TensorRT engine built
from it (the pipeline's step, not the runtime's).

``--runtime onnxruntime`` and ``tensorrt`` run an exported artifact folder. With ``--engine-dir`` it is the user's;
without it, the export for these model options in the cache (``CDUL_RT_CACHE``/engines/<key>), made here once
with the exporter (torch) and reused by every later run, Ray actor or server with the same options. The runtimes
themselves only open a folder they are given, so ``engines/`` never imports ``export/``. For ``--runtime
tensorrt`` the labeler engine for this GPU, TensorRT and request is then found in the folder's ``tensorrt/`` or built
there once (:mod:`cdul_rt.engines.trt.build`); the runtime only opens it. The result is the runtime's typed request
(:class:`~cdul_rt.engines.request.RuntimeRequest`).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from cdul_rt.artifacts.folder import FOLDER_RUNTIMES
from cdul_rt.artifacts.manifest import MANIFEST, SCHEMA_VERSION, verify_artifacts
from cdul_rt.engines.request import RuntimeRequest
from cdul_rt.errors import CdulError


def cached_folder(cfg) -> Path:
    """The cache folder for these export options (``CDUL_RT_CACHE``/engines/<key>), exporting into it once."""
    from cdul_rt import __version__
    from cdul_rt.cache import cache_dir, file_sha256, json_key

    config = Path(cfg.model).read_text(encoding="utf-8") if cfg.model.endswith(".json") else None
    key = json_key({"model": cfg.model, "pretrained": cfg.pretrained, "config": config, "schema": SCHEMA_VERSION,
                    "weights": file_sha256(cfg.weights) if cfg.weights else None, "precision": cfg.precision,
                    "grid": cfg.grid, "mode": cfg.mode, "version": __version__})
    folder = cache_dir("engines", key)
    if (folder / MANIFEST).is_file():
        try:
            if "image_embeddings" in verify_artifacts(folder, ("labeler.onnx",)).labeler.outputs:
                return folder
            print(f"cached ONNX export in {folder} predates image embeddings; exporting it again", file=sys.stderr)
        except CdulError as exc:
            print(f"cached ONNX export in {folder} is damaged ({exc}); exporting it again", file=sys.stderr)
    print(f"no --engine-dir given: exporting {cfg.model} to ONNX ({cfg.precision}) once into {folder}; "
          "later runs with the same model options reuse it", file=sys.stderr)
    from cdul_rt.export.clip import export_clip

    export_clip(export_options(cfg, folder))
    return folder


def export_options(cfg, out: Path):
    """The export of ``cfg``'s model, vocabulary and labeler into ``out``: :class:`~cdul_rt.export.clip.ExportOptions`
    names its fields as ``label`` names the options, so they are taken by name (the export's own ``opset`` keeps its
    default)."""
    from dataclasses import fields

    from cdul_rt.export.clip import ExportOptions

    names = [f.name for f in fields(ExportOptions) if f.name not in ("out", "opset")]
    return ExportOptions(out=out, **{name: getattr(cfg, name) for name in names})


def prepare_request(cfg) -> RuntimeRequest:
    """The typed request the runtime opens for ``cfg`` (a :class:`~cdul_rt.pipeline.LabelConfig`): runtime ``auto``
    resolved by the default rule, and for a graph runtime without ``engine_dir`` the cached export's folder (made
    once). The runtime's own checks that need no folder (its package installed, the device it runs on) come first,
    so a missing TensorRT or a CPU device is refused before minutes of export. ``cfg`` itself is not changed: what
    the label file records stays what the user asked for."""
    from cdul_rt.engines import runtime_module

    if cfg.runtime == "auto":
        from cdul_rt.engines.auto import choose

        cand = choose(cfg.runtime, cfg.precision, cfg.device, cfg.engine_dir)
        cfg = replace(cfg, runtime=cand.runtime, precision=cand.precision)
    request = cfg.runtime_request()
    if request.runtime not in FOLDER_RUNTIMES:
        return request
    if request.engine_dir is None:
        runtime_module(request.runtime).check_available(request)
        request = replace(request, engine_dir=cached_folder(cfg))
    if request.runtime == "tensorrt":
        tensorrt_engine(request)
    return request


def tensorrt_engine(request: RuntimeRequest) -> None:
    """Find or build (minutes, once per GPU, TensorRT version and build options) the labeler engine the TensorRT
    runtime will open from ``request.engine_dir``. Refused before any build: no TensorRT or no CUDA device, and a
    folder exported for other options; before a build every file of the folder is checked against its manifest."""
    from cdul_rt.artifacts.folder import check_request
    from cdul_rt.artifacts.manifest import read_manifest
    from cdul_rt.engines.trt.build import ENGINE_FOLDER, build_engine, find_engine, labeler_build
    from cdul_rt.engines.trt.loader import check_available

    device = check_available(request)
    folder = Path(request.engine_dir)
    manifest = read_manifest(folder)
    # same model, weights, grid and mode; the precision may differ (TRT 10 builds fp16 from the fp32 graph)
    check_request(manifest, folder, request.model, manifest.precision, request.grid, request.aggregation.mode)
    src, build = labeler_build(request, folder, device)
    found = find_engine(src, folder / ENGINE_FOLDER, build)
    if found.plan is None:
        verify_artifacts(folder)  # the runtime verifies again when it opens; a damaged folder fails before minutes
    build_engine(src, folder / ENGINE_FOLDER, build, found=found)  # "up to date", or the build with its messages
