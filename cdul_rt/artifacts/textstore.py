"""Class text embeddings stored inside an artifact folder: ``text_embeddings/<key>.npy`` plus ``<key>.json``.

Torch-free (numpy only). The JSON sidecar names the vocabulary, template and the sha256 of the ``.npy``, so a file
copied from another vocabulary or model, or damaged, is refused with a message instead of giving wrong scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cdul_rt.cache import json_key
from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_path, sha256_file
from cdul_rt.vocab import Vocabulary

FOLDER = "text_embeddings"


def vocab_key(vocab: Vocabulary, template: str) -> str:
    return json_key({"classes": list(vocab.classes), "prompts": list(vocab.prompt_names), "template": template})


def embeddings_path(folder: Path, vocab: Vocabulary, template: str) -> Path:
    return Path(folder) / FOLDER / f"{vocab_key(vocab, template)}.npy"


def save_text_embeddings(folder: Path, vocab: Vocabulary, template: str, emb: np.ndarray,
                         weights_hash: str) -> str:
    """Write the embeddings atomically; returns the path relative to ``folder``."""
    path = embeddings_path(folder, vocab, template)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".partial.npy") as tmp:  # np.save appends .npy to any other name
        np.save(tmp, np.ascontiguousarray(emb, dtype=np.float32))
    info = {"vocabulary": vocab.name, "classes": list(vocab.classes), "prompts": list(vocab.prompt_names),
            "template": template, "shape": list(emb.shape), "weights_hash": weights_hash,
            "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return path.relative_to(folder).as_posix()


def load_text_embeddings(folder: Path, vocab: Vocabulary, template: str, embed_dim: int,
                         weights_hash: str) -> np.ndarray | None:
    """The stored embeddings of (vocab, template), ``None`` when there are none; damaged or foreign ones raise."""
    path = embeddings_path(folder, vocab, template)
    info_path = path.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CdulError(f"{info_path} is missing or damaged ({exc}); delete {path} to recompute it") from exc
    if info.get("classes") != list(vocab.classes) or info.get("template") != template \
            or info.get("prompts") != list(vocab.prompt_names):
        raise CdulError(f"{path} holds the embeddings of another vocabulary or template "
                        f"({len(info.get('classes', []))} classes, template {info.get('template')!r}); delete it to "
                        "recompute it, or re-export with --classes")
    if info.get("weights_hash") != weights_hash:
        raise CdulError(f"{path} was computed with other model weights ({info.get('weights_hash')}); delete it")
    if sha256_file(path) != info.get("sha256"):
        raise CdulError(f"{path} does not match its recorded sha256 (damaged or replaced); delete it to recompute")
    try:
        emb = np.load(path)
    except (OSError, ValueError) as exc:
        raise CdulError(f"cannot read {path} ({exc}); delete it to recompute") from exc
    if emb.dtype != np.float32 or emb.shape != (len(vocab), embed_dim):
        raise CdulError(f"{path} has shape {emb.shape} {emb.dtype}, expected ({len(vocab)}, {embed_dim}) float32 "
                        "for this vocabulary and model; delete it to recompute")
    return emb
