"""``cdul-rt similar``: nearest images to a query image or text, over embeddings saved by ``label --save-embeddings``.

Brute force: one matrix-vector product over the float16 embeddings, in chunks of ``CHUNK`` rows cast to float32, so
memory stays bounded; at 1M images x 512 dims that is 1 GB on disk (memory-mapped for ``.npy``) and about a second
of CPU. Beyond a few million images, an approximate index (FAISS, hnswlib) is the better tool; these files load
into one directly (``np.load`` + the paths list).
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


def load_query_model(meta: dict, model: str | None = None, pretrained: str | None = None,
                     weights: str | None = None, device: str = "cpu"):
    """The CLIP the embeddings were made with (from the label file's meta unless given), checked by weights hash."""
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    recorded = meta.get("embeddings", {})
    model = model or recorded.get("model")
    if not model:
        raise CdulError("the label file's meta does not say which model made the embeddings; pass --model "
                        "(and --weights / --pretrained as for `label`)")
    bundle = load_clip(resolve_model(model, pretrained or recorded.get("pretrained"),
                                     weights or recorded.get("weights")), device=device)
    made_with = meta.get("config", {}).get("weights_hash")
    if made_with and made_with != bundle.weights_hash:
        raise CdulError(f"{bundle.model_id} is not the model the embeddings were made with (weights differ); pass "
                        "the --model / --weights / --pretrained the label file was made with")
    return bundle


def embed_image(bundle, path: str | Path, device: str = "cpu") -> np.ndarray:
    """The image's global-view embedding, decoded and preprocessed exactly as ``label`` does (crop 0)."""
    from cdul_rt.engines.torch.runner import TorchVisualRunner
    from cdul_rt.imageio import open_rgb
    from cdul_rt.preprocess import normalize_batch, preprocess_uint8

    try:
        img = open_rgb(path)
    except CdulError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear message for any unreadable query image
        raise CdulError(f"cannot read query image {path}: {exc}") from exc
    crop = normalize_batch(preprocess_uint8(img, bundle.preprocess)[None], bundle.preprocess)
    with TorchVisualRunner(bundle, device=device) as runner:
        return runner.infer({"crops": crop})["image_embeddings"][0]


def embed_text(bundle, text: str) -> np.ndarray:
    """The text's embedding, as given (no prompt template: write the query the way you would caption the image)."""
    from cdul_rt.textcache import encode_text_torch

    return encode_text_torch(bundle, [text])[0]
