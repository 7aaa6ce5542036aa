"""Class text embeddings: w_i = normalize(E_t(prompt(c_i))), computed once, cached on disk.

The cache key is (model identity incl. weights hash, vocabulary, template), so a different checkpoint or prompt
never reuses stale embeddings.
"""

from __future__ import annotations

import numpy as np

from cdul_rt.cache import cache_dir, json_key
from cdul_rt.fileio import atomic_path
from cdul_rt.vocab import Vocabulary


def text_cache_key(model_key: str, vocab: Vocabulary, template: str) -> str:
    return json_key({"model": model_key, "classes": list(vocab.classes), "prompts": list(vocab.prompt_names),
                     "template": template})


def encode_text_torch(bundle, prompts: list[str], batch_size: int = 256) -> np.ndarray:
    """Run the CLIP text tower on prompts -> L2-normalised float32 ``[C, D]``."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            tokens = bundle.tokenizer(prompts[i:i + batch_size])
            device = next(bundle.model.parameters()).device
            emb = bundle.model.encode_text(tokens.to(device)).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def text_embeddings(bundle, vocab: Vocabulary, template: str, model_key: str, use_cache: bool = True) -> np.ndarray:
    """Cached class embeddings for ``vocab`` under ``template``."""
    path = cache_dir("text") / f"{text_cache_key(model_key, vocab, template)}.npy"
    if use_cache and path.is_file():
        emb = np.load(path)
        if emb.shape[0] == len(vocab):
            return emb
    emb = encode_text_torch(bundle, vocab.prompts(template))
    with atomic_path(path, suffix=".partial.npy") as tmp:  # np.save appends .npy to any other name
        np.save(tmp, emb)
    return emb
