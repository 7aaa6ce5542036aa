"""A label request against an artifact folder: the options the folder supplies, and the refusal of a folder
exported for another model, weights, precision, grid or mode.

``cdul-rt export`` records the model, weights, grid, aggregation mode, zeta, lambda and precision in the folder's
``manifest.json``, with the vocabulary and template it stored embeddings for. ``label --runtime
onnxruntime|tensorrt --engine-dir DIR`` therefore needs none of them: every option the user did not give is taken
from the manifest (:func:`label_options_from_folder`), and every option the user did give is still checked against
it when the runtime opens the folder (:func:`check_request`), with its clear error.

Pure: reads the manifest only (no torch, no onnxruntime), so the Python API can use it as well as the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

from cdul_rt.aggregation import OPTIONS as AGGREGATION_OPTIONS
from cdul_rt.artifacts.manifest import Manifest, VocabularyInfo, read_manifest
from cdul_rt.errors import CdulError
from cdul_rt.presets import ModelRequest

# label options a folder can supply (the user's value, when given, is checked against the folder instead)
FOLDER_OPTIONS = ("model", "pretrained", "weights", "grid", *AGGREGATION_OPTIONS, "precision", "classes", "template")
# runtimes that run an artifact folder (torch ignores --engine-dir; auto opens torch as its reference)
FOLDER_RUNTIMES = ("onnxruntime", "tensorrt")


def folder_options(manifest: Manifest, given: set[str]) -> dict:
    """The options of ``FOLDER_OPTIONS`` not in ``given``, as the folder's manifest records them.

    The model is named by its architecture (a name every check accepts, also when it was exported from a config
    file that is no longer there); ``pretrained`` and ``weights`` stay unset: the folder carries the weights and
    its weights hash is what the label file records.
    """
    lab = manifest.labeler
    known = {"model": manifest.model.arch, "pretrained": None, "weights": None, "grid": int(lab.grid),
             **lab.aggregation.options(), "precision": manifest.precision, "classes": vocabulary_option(manifest.vocabulary),
             "template": manifest.vocabulary.template}
    return {k: v for k, v in known.items() if k not in given and (v is not None or k in ("pretrained", "weights"))}


def vocabulary_option(vocabulary: VocabularyInfo) -> str | None:
    """The ``--classes`` value that loads the folder's exported vocabulary: its built-in name when it is one
    unchanged, else a comma list of ``label=prompt`` items; ``None`` when no such list can say it (a class name
    with a comma or '='), which leaves ``label``'s default."""
    from cdul_rt.vocab import builtin_names, load_vocabulary

    vocabulary = VocabularyInfo.from_dict(vocabulary)
    classes = [str(c) for c in vocabulary.classes or []]
    prompts = [str(p) for p in vocabulary.prompts or classes]
    if not classes or len(prompts) != len(classes):
        return None
    name = vocabulary.name
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
    return {**opts, **folder_options(read_manifest(Path(opts["engine_dir"])), given)}


def check_request(manifest: Manifest, folder: Path, model: ModelRequest, precision: str, grid: int,
                  mode: str) -> None:
    """Refuse a folder exported for another model, weights, precision, grid or aggregation mode (the model is
    matched by name, unresolved: no open_clip import)."""
    from cdul_rt.cache import file_sha256

    m = manifest.model
    request_name = ModelRequest(m.request.model or "").short_name
    names = {m.arch, m.display, f"{m.arch}.{m.pretrained}", request_name}
    fix = "pass the options it was exported with, or export a folder for yours (`cdul-rt export --out DIR ...`)"
    if model.short_name not in names:
        raise CdulError(f"{folder} holds model {m.display}, not {model.name}; {fix}")
    config = model.config_file
    if config is not None and config.is_file():
        if json.loads(config.read_text(encoding="utf-8")) != m.config:
            raise CdulError(f"{folder} holds a model with another config than {model.name}; {fix}")
    if model.pretrained is not None and model.pretrained not in (m.pretrained, m.request.pretrained):
        raise CdulError(f"{folder} holds {m.display} (weights {m.pretrained}), not --pretrained {model.pretrained}; "
                        f"{fix}")
    if model.weights is not None and file_sha256(model.weights) != m.weights_hash:
        raise CdulError(f"{folder} was exported from other weights than {model.weights} (sha256 differs); {fix}")
    lab = manifest.labeler
    for what, mine, theirs in (("precision", precision, manifest.precision), ("grid", grid, lab.grid),
                               ("mode", mode, lab.aggregation.mode)):
        if mine != theirs:
            raise CdulError(f"{folder} holds {theirs} graphs for --{what}, not {mine}; pass --{what} {theirs} "
                            f"or export another folder (`cdul-rt export --{what} {mine} ...`)")
