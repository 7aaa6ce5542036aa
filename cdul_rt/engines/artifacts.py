"""A self-describing artifact folder: ``--engine-dir DIR`` supplies the label options it was exported with.

``cdul-rt export`` records the model, weights, grid, aggregation mode, zeta, lambda and precision in the folder's
``manifest.json``. ``label --runtime onnxruntime|tensorrt --engine-dir DIR`` therefore needs none of them: every
option the user did not give is taken from the manifest, and every option the user did give is still checked
against it by the runtime's loader (``engines.onnxrt.loader.check_request``), with its clear error.

Pure: reads the manifest only (no torch, no onnxruntime), so the Python API can use it as well as the CLI.
"""

from __future__ import annotations

from pathlib import Path

# label options a folder can supply (the user's value, when given, is checked against the folder instead)
FOLDER_OPTIONS = ("model", "pretrained", "weights", "grid", "mode", "zeta", "lam", "precision")
# runtimes that run an artifact folder (torch ignores --engine-dir; auto opens torch as its reference)
FOLDER_RUNTIMES = ("onnxruntime", "tensorrt")


def folder_options(manifest, given: set[str]) -> dict:
    """The options of ``FOLDER_OPTIONS`` not in ``given``, as the folder's manifest records them.

    The model is named by its architecture (a name every check accepts, also when it was exported from a config
    file that is no longer there); ``pretrained`` and ``weights`` stay unset: the folder carries the weights and
    its weights hash is what the label file records.
    """
    lab = manifest.labeler
    known = {"model": manifest.model["arch"], "pretrained": None, "weights": None, "grid": int(lab["grid"]),
             "mode": lab["mode"], "zeta": lab.get("zeta"), "lam": lab.get("lambda"),
             "precision": manifest.precision}
    return {k: v for k, v in known.items() if k not in given and (v is not None or k in ("pretrained", "weights"))}


def label_options_from_folder(opts: dict, given: set[str]) -> dict:
    """``opts`` (the label command's keyword options) completed from ``opts['engine_dir']``'s manifest when the
    runtime runs artifact folders; unchanged otherwise."""
    if not opts.get("engine_dir") or opts.get("runtime") not in FOLDER_RUNTIMES:
        return opts
    from cdul_rt.export.manifest import read_manifest

    return {**opts, **folder_options(read_manifest(Path(opts["engine_dir"])), given)}
