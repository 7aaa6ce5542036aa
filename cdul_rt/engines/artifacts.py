"""A self-describing artifact folder: ``--engine-dir DIR`` supplies the label options it was exported with.

``cdul-rt export`` records the model, weights, grid, aggregation mode, zeta, lambda and precision in the folder's
``manifest.json``, with the vocabulary and template it stored embeddings for. ``label --runtime
onnxruntime|tensorrt --engine-dir DIR`` therefore needs none of them: every
option the user did not give is taken from the manifest, and every option the user did give is still checked
against it by the runtime's loader (``engines.onnxrt.loader.check_request``), with its clear error.

Pure: reads the manifest only (no torch, no onnxruntime), so the Python API can use it as well as the CLI.
"""

from __future__ import annotations

from pathlib import Path

# label options a folder can supply (the user's value, when given, is checked against the folder instead)
FOLDER_OPTIONS = ("model", "pretrained", "weights", "grid", "mode", "zeta", "lam", "precision", "classes", "template")
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
             "precision": manifest.precision, "classes": vocabulary_option(manifest.vocabulary),
             "template": manifest.vocabulary.get("template")}
    return {k: v for k, v in known.items() if k not in given and (v is not None or k in ("pretrained", "weights"))}


def vocabulary_option(vocabulary: dict) -> str | None:
    """The ``--classes`` value that loads the folder's exported vocabulary: its built-in name when it is one
    unchanged, else a comma list of ``label=prompt`` items; ``None`` when no such list can say it (a class name
    with a comma or '='), which leaves ``label``'s default."""
    from cdul_rt.vocab import builtin_names, load_vocabulary

    classes = [str(c) for c in vocabulary.get("classes") or []]
    prompts = [str(p) for p in vocabulary.get("prompts") or classes]
    if not classes or len(prompts) != len(classes):
        return None
    name = vocabulary.get("name")
    if name in builtin_names():
        builtin = load_vocabulary(name)
        if list(builtin.classes) == classes and list(builtin.prompt_names) == prompts:
            return name
    if any("," in s or "=" in s for s in classes + prompts):
        return None
    items = [c if c == p else f"{c}={p}" for c, p in zip(classes, prompts)]
    return ",".join(items) + ("," if len(items) == 1 else "")  # a trailing comma keeps one class a list


def label_options_from_folder(opts: dict, given: set[str]) -> dict:
    """``opts`` (the label command's keyword options) completed from ``opts['engine_dir']``'s manifest when the
    runtime runs artifact folders; unchanged otherwise."""
    if not opts.get("engine_dir") or opts.get("runtime") not in FOLDER_RUNTIMES:
        return opts
    from cdul_rt.export.manifest import read_manifest

    return {**opts, **folder_options(read_manifest(Path(opts["engine_dir"])), given)}
