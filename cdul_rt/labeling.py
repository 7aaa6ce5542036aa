"""Similarities -> per-crop class scores -> aggregated pseudo labels (DESIGN.md 1.1 steps 5-8; paper eqs. 1-6).

Plain functions in numpy (reference, torch-free) and torch (used by the torch runtime and traced into the ONNX
labeler graph). Scores have shape ``[k, 1 + N, C]``: k images, crop 0 the global view, crops 1..N the snippets.
"""

from __future__ import annotations

import numpy as np

from cdul_rt.errors import CdulError

MODES = ("cdul", "global", "avg", "max")
# paper: zeta in [0, 0.4]. 0.3 keeps a class's best snippet only when it is a confident match under real CLIP's
# scale of 100. The synthetic world's tiny CLIP (scale 13, weak) prefers 0 (BENCHMARKS.md, zeta sweep), where cdul
# becomes `max` of global and snippets; we keep the paper-range default for real CLIPs and document the sweep.
DEFAULT_ZETA = 0.3
DEFAULT_LAMBDA = 1.0  # paper Table 1: lambda = 1 (element-wise max of global and aggregate) is best


def check_mode(mode: str) -> str:
    if mode not in MODES:
        from cdul_rt.errors import did_you_mean

        raise did_you_mean(mode, MODES, "aggregation mode", f"Modes: {', '.join(MODES)}.")
    return mode


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


def aggregate_np(s: np.ndarray, mode: str = "cdul", zeta: float = DEFAULT_ZETA, lam: float = DEFAULT_LAMBDA):
    """Per-crop scores ``[k, 1+N, C]`` -> (S_final, S_global, S_ag), each ``[k, C]`` (eqs. 5-6)."""
    check_mode(mode)
    if s.ndim != 3 or s.shape[1] < 2:
        raise CdulError(f"scores must be [images, 1 + snippets, classes], got shape {s.shape}")
    s_global = s[:, 0]
    local = s[:, 1:]
    alpha, beta = local.max(axis=1), local.min(axis=1)
    s_ag = np.where(alpha >= zeta, alpha, beta)
    if mode == "cdul":
        final = 0.5 * (s_global + s_ag + lam * np.abs(s_global - s_ag))
    elif mode == "global":
        final = s_global
    elif mode == "avg":
        final = s.mean(axis=1)
    else:
        final = s.max(axis=1)
    return final.astype(np.float32), s_global.astype(np.float32), s_ag.astype(np.float32)


def class_scores_torch(image_emb, text_emb, logit_scale):
    """Torch twin of :func:`class_scores_np`; ``logit_scale`` is the raw parameter (a tensor or float)."""
    import torch

    img = torch.nn.functional.normalize(image_emb, dim=-1)
    txt = torch.nn.functional.normalize(text_emb, dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=img.dtype, device=img.device).exp()
    return torch.softmax(scale * (img @ txt.T), dim=-1)


def aggregate_torch(s, mode: str = "cdul", zeta: float = DEFAULT_ZETA, lam: float = DEFAULT_LAMBDA):
    """Torch twin of :func:`aggregate_np` (exportable to ONNX: only max/min/where/abs/mean)."""
    import torch

    check_mode(mode)
    s_global = s[:, 0]
    local = s[:, 1:]
    alpha = local.amax(dim=1)
    beta = local.amin(dim=1)
    s_ag = torch.where(alpha >= zeta, alpha, beta)
    if mode == "cdul":
        final = 0.5 * (s_global + s_ag + lam * (s_global - s_ag).abs())
    elif mode == "global":
        final = s_global
    elif mode == "avg":
        final = s.mean(dim=1)
    else:
        final = s.amax(dim=1)
    return final, s_global, s_ag
