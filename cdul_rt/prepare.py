"""Before a runtime opens: find or make the artifact folder a graph runtime runs (the pipeline's step, not the
runtime's).

``--runtime onnxruntime`` and ``tensorrt`` run an exported artifact folder. With ``--engine-dir`` it is the user's;
without it, the export for these model options in the cache (``CDUL_RT_CACHE``/engines/<key>), made here once
with the exporter (torch) and reused by every later run, Ray actor or server with the same options. The runtimes
themselves only open a folder they are given, so ``engines/`` never imports ``export/``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from cdul_rt.artifacts.folder import FOLDER_RUNTIMES
from cdul_rt.artifacts.manifest import MANIFEST, SCHEMA_VERSION, verify_artifacts
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
    from cdul_rt.export.clip import ExportOptions, export_clip

    export_clip(ExportOptions(out=folder, model=cfg.model, pretrained=cfg.pretrained, weights=cfg.weights,
                              classes=cfg.classes, template=cfg.template, grid=cfg.grid,
                              **cfg.aggregation.options(), precision=cfg.precision))
    return folder


def prepare_label_config(cfg):
    """``cfg`` (a :class:`~cdul_rt.pipeline.LabelConfig`) as the runtime opens it: runtime ``auto`` resolved by the
    default rule, and for a graph runtime without ``engine_dir`` the cached export's folder (made once). The
    runtime's own checks that need no folder (its package installed, the device it runs on) come first, so a
    missing TensorRT or a CPU device is refused before minutes of export. ``cfg`` itself is not changed: what
    the label file records stays what the user asked for."""
    from cdul_rt.engines import runtime_module

    if cfg.runtime == "auto":
        from cdul_rt.engines.auto import choose

        cand = choose(cfg.runtime, cfg.precision, cfg.device, cfg.engine_dir)
        cfg = replace(cfg, runtime=cand.runtime, precision=cand.precision)
    if cfg.runtime not in FOLDER_RUNTIMES or cfg.engine_dir:
        return cfg
    runtime_module(cfg.runtime).check_available(cfg)
    return replace(cfg, engine_dir=str(cached_folder(cfg)))
