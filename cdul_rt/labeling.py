"""Similarities -> per-crop class scores (DESIGN.md 1.1 step 5; paper eqs. 1-4). Their aggregation into pseudo
labels (steps 6-8) is :class:`cdul_rt.aggregation.Aggregation`.

Plain functions in numpy (reference, torch-free) and torch (used by the torch runtime and traced into the ONNX
labeler graph).
"""

from __future__ import annotations

import numpy as np


def _np_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def class_scores_np(image_emb: np.ndarray, text_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """softmax over classes of exp(logit_scale) * cos(image, text) (eqs. 1-2 global, 3-4 local).

    ``logit_scale`` is the model's raw learned parameter (ln 100 for OpenAI CLIP); the multiplier is its exp.
    Using the raw value makes every score ~1/C (the known reimplementation bug).
    """
    img = image_emb / np.linalg.norm(image_emb, axis=-1, keepdims=True)
    txt = text_emb / np.linalg.norm(text_emb, axis=-1, keepdims=True)
    return _np_softmax(np.float32(np.exp(logit_scale)) * (img @ txt.T))


def class_scores_torch(image_emb, text_emb, logit_scale):
    """Torch twin of :func:`class_scores_np`; ``logit_scale`` is the raw parameter (a tensor or float)."""
    import torch

    img = torch.nn.functional.normalize(image_emb, dim=-1)
    txt = torch.nn.functional.normalize(text_emb, dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=img.dtype, device=img.device).exp()
    return torch.softmax(scale * (img @ txt.T), dim=-1)
