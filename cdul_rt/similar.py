"""``cdul-rt similar``: nearest images to a query image or text, over embeddings saved by ``label --save-embeddings``.

Brute force: one matrix-vector product over the float16 embeddings, in chunks of ``CHUNK`` rows cast to float32, so
memory stays bounded; at 1M images x 512 dims that is 1 GB on disk (memory-mapped for ``.npy``) and 5-7 s per query
on our shared 2-core CPU (``bench/similar_scale.py``, BENCHMARKS.md): fine up to about a million images. Beyond
that, an approximate index (FAISS, hnswlib) is the better tool; these files load into one directly (``np.load`` +
the paths list).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError

CHUNK = 65_536


def top_matches(embeddings: np.ndarray, query: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``top`` rows closest to ``query`` (rows and query L2-normalised)."""
    query = np.asarray(query, dtype=np.float32).ravel()
    if embeddings.shape[1] != query.size:
        raise CdulError(f"the query embedding has {query.size} dims, the saved ones {embeddings.shape[1]}: "
                        "embed the query with the model the labels were made with")
    sims = np.empty(embeddings.shape[0], dtype=np.float32)
    for i in range(0, embeddings.shape[0], CHUNK):
        sims[i:i + CHUNK] = np.asarray(embeddings[i:i + CHUNK], dtype=np.float32) @ query
    top = min(top, sims.size)
    idx = np.argpartition(-sims, top - 1)[:top] if top else np.zeros(0, dtype=np.int64)
    idx = idx[np.argsort(-sims[idx], kind="stable")]
    return idx, sims[idx]


def open_query_labeler(meta: dict, model: str | None = None, pretrained: str | None = None,
                       weights: str | None = None, runtime: str | None = None, device: str = "cpu"):
    """A :class:`cdul_rt.Labeler` (its vocabulary unused) on the CLIP the embeddings were made with (from the label
    file's meta unless given; checked by weights hash), decoding as the run did (grid and ``--jpeg-draft`` decide
    the decode size). Embeddings made from an artifact folder (``label --engine-dir``) are queried through that
    folder (onnxruntime unless ``runtime`` says otherwise: no torch, no original weights needed)."""
    from cdul_rt.api import Labeler

    recorded, config = meta.get("embeddings", {}), meta.get("config", {})
    folder = recorded.get("engine_dir") if model is None else None
    if folder:
        if not Path(folder).is_dir():
            raise CdulError(f"the embeddings were made with the artifact folder {folder}, which is not on this "
                            "machine; pass --model (and --weights / --pretrained) of the CLIP it was exported from")
        labeler = Labeler.open(engine_dir=folder, classes="image,photo", device=device,
                               runtime=runtime or (config.get("runtime") if config.get("runtime") in
                                                   ("onnxruntime", "tensorrt") else "onnxruntime"),
                               jpeg_draft=bool(config.get("jpeg_draft")))
    else:
        model = model or recorded.get("model")
        if not model:
            raise CdulError("the label file's meta does not say which model made the embeddings; pass --model "
                            "(and --weights / --pretrained as for `label`)")
        labeler = Labeler.open(model, weights=weights or recorded.get("weights"),
                               pretrained=pretrained or recorded.get("pretrained"), classes="image,photo",
                               runtime=runtime or "torch", device=device, grid=config.get("grid"),
                               jpeg_draft=bool(config.get("jpeg_draft")))
    made_with = config.get("weights_hash")
    if made_with and made_with != labeler.config.get("weights_hash"):
        labeler.close()
        raise CdulError(f"{model} is not the model the embeddings were made with (weights differ); pass the "
                        "--model / --weights / --pretrained the label file was made with")
    return labeler


def embed_query(labeler, image: str | Path | None = None, text: str | None = None) -> np.ndarray:
    """The query's L2-normalised embedding: an image's global view (decoded and preprocessed as ``label`` does),
    or a text as written (no prompt template: write it the way you would caption the image)."""
    if image is not None:
        return labeler.embed_images([Path(image)])[0]
    return labeler.embed_texts(text)[0]
