"""The CDUL formulas (DESIGN.md 1.1, paper eqs. 1-6) on hand-computed values, numpy and torch alike."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.aggregation import aggregate_np, aggregate_torch
from cdul_rt.labeling import class_scores_np, class_scores_torch


def test_class_scores_use_exp_of_logit_scale():
    # image along e0; two classes at cos = 1 and cos = 0. With scale = exp(ln 100) = 100:
    # softmax([100, 0]) = [1/(1+e^-100), ...] ~ [1, 0]
    img = np.array([[1.0, 0.0]], dtype=np.float32)
    txt = np.array([[2.0, 0.0], [0.0, 3.0]], dtype=np.float32)  # not unit length: normalisation is part of cos
    s = class_scores_np(img, txt, logit_scale=math.log(100.0))
    assert s[0, 0] == pytest.approx(1.0, abs=1e-6)
    # cos difference of 0.05 at scale 100 gives odds e^5
    txt2 = np.array([[1.0, 0.0], [0.95, math.sqrt(1 - 0.95**2)]], dtype=np.float32)
    s2 = class_scores_np(img, txt2, math.log(100.0))
    assert s2[0, 0] / s2[0, 1] == pytest.approx(math.exp(5.0), rel=1e-3)


def _clip_like(cosines: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """One image embedding and C text embeddings with exactly the given cosines (CLIP's typical 0.15-0.35 range)."""
    c = len(cosines)
    img = np.zeros((1, c + 1), dtype=np.float64)
    img[0, 0] = 1.0
    txt = np.zeros((c, c + 1), dtype=np.float64)
    for i, cos in enumerate(cosines):
        txt[i, 0], txt[i, i + 1] = cos, math.sqrt(1 - cos * cos)
    return img.astype(np.float32), txt.astype(np.float32)


def test_raw_logit_scale_bug_would_flatten_scores():
    """The known reimplementation bug multiplies by ln(100) ~ 4.6 instead of 100: scores collapse towards 1/C."""
    img, txt = _clip_like([0.32] + [0.22] * 79)  # the right class is 0.1 cosine ahead, as with real CLIP
    good = class_scores_np(img, txt, math.log(100.0))
    assert good[0, 0] == pytest.approx(1 / (1 + 79 * math.exp(-10.0)), rel=1e-4)
    assert good[0, 0] > 0.99
    # the buggy version computes softmax(ln(100) * cos) == ours with logit_scale = ln(ln 100)
    buggy = class_scores_np(img, txt, math.log(math.log(100.0)))
    assert buggy[0, 0] < 0.05  # ~1/C: nothing passes a 0.5 threshold
    assert buggy[0, 0] == pytest.approx(1 / (1 + 79 * math.exp(-0.1 * math.log(100.0))), rel=1e-4)


def test_cdul_aggregation_hand_computed():
    # one image, 1 global + 3 snippets, 3 classes
    s = np.array([[[0.6, 0.3, 0.1],     # global
                   [0.2, 0.7, 0.1],     # snippet 1
                   [0.5, 0.2, 0.3],     # snippet 2
                   [0.1, 0.05, 0.85]]], dtype=np.float32)
    zeta = 0.4
    final, glob, ag = aggregate_np(s, "cdul", zeta=zeta, lam=1.0)
    # alpha = max over snippets = [0.5, 0.7, 0.85] all >= 0.4 -> S_ag = alpha
    np.testing.assert_allclose(ag[0], [0.5, 0.7, 0.85], atol=1e-7)
    # lambda = 1: element-wise max of global and S_ag
    np.testing.assert_allclose(final[0], [0.6, 0.7, 0.85], atol=1e-7)
    np.testing.assert_allclose(glob[0], s[0, 0])
    # lambda = 0: the mean
    final0, _, _ = aggregate_np(s, "cdul", zeta=zeta, lam=0.0)
    np.testing.assert_allclose(final0[0], [0.55, 0.5, 0.475], atol=1e-7)
    # zeta = 0.6: class 0 (alpha 0.5) falls back to beta = min = 0.1; class 1 keeps 0.7
    _, _, ag6 = aggregate_np(s, "cdul", zeta=0.6, lam=1.0)
    np.testing.assert_allclose(ag6[0], [0.1, 0.7, 0.85], atol=1e-7)
    # gamma uses >=: alpha exactly equal to zeta keeps alpha
    _, _, ag_eq = aggregate_np(s, "cdul", zeta=0.7, lam=1.0)
    assert ag_eq[0, 1] == pytest.approx(0.7)
    assert ag_eq[0, 0] == pytest.approx(0.1)


def test_ablation_modes_hand_computed():
    s = np.array([[[0.6, 0.4], [0.2, 0.8], [1.0, 0.0]]], dtype=np.float32)
    np.testing.assert_allclose(aggregate_np(s, "global")[0][0], [0.6, 0.4])
    np.testing.assert_allclose(aggregate_np(s, "avg")[0][0], [0.6, 0.4])
    np.testing.assert_allclose(aggregate_np(s, "max")[0][0], [1.0, 0.8])


@pytest.mark.parametrize("mode", ["cdul", "global", "avg", "max"])
def test_torch_twins_match_numpy(mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(3 * 10, 24)).astype(np.float32)
    txt = rng.normal(size=(7, 24)).astype(np.float32)
    s_np = class_scores_np(emb, txt, 4.0).reshape(3, 10, 7)
    s_t = class_scores_torch(torch.from_numpy(emb), torch.from_numpy(txt), 4.0).reshape(3, 10, 7)
    np.testing.assert_allclose(s_t.numpy(), s_np, atol=1e-5)
    for a, b in zip(aggregate_np(s_np, mode, 0.2, 0.7), aggregate_torch(s_t, mode, 0.2, 0.7)):
        np.testing.assert_allclose(b.numpy(), a, atol=1e-5)


def test_bad_mode_and_shape():
    with pytest.raises(CdulError, match="did you mean 'cdul'"):
        aggregate_np(np.zeros((1, 10, 3)), "cdl")
    with pytest.raises(CdulError, match="shape"):
        aggregate_np(np.zeros((10, 3)), "cdul")


# -- mutation survivors (issue 19 item 4) ---------------------------------------------------------------------------
def test_class_scores_are_finite_for_rows_far_apart():
    # one crop matches a class exactly (logit 100), another is opposite to every class (logits -100): a softmax
    # shifted by the batch's maximum instead of each row's would underflow that row to 0/0
    txt = np.eye(3, dtype=np.float32)
    img = np.array([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]], dtype=np.float32)
    s = class_scores_np(img, txt, math.log(100.0))
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s[1], 1 / 3, rtol=1e-5)


def test_class_scores_of_crops_grouped_per_image_are_the_flat_ones():
    rng = np.random.default_rng(4)
    img, txt = rng.normal(size=(3, 5, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    grouped = class_scores_np(img, txt, 4.0)
    assert grouped.shape == (3, 5, 7)
    np.testing.assert_allclose(grouped, class_scores_np(img.reshape(15, 8), txt, 4.0).reshape(3, 5, 7), rtol=1e-6)


def test_the_torch_twin_handles_grouped_crops_and_keeps_the_input_precision():
    import torch

    rng = np.random.default_rng(5)
    img, txt = rng.normal(size=(3, 5, 8)), rng.normal(size=(7, 8))
    grouped = class_scores_torch(torch.from_numpy(img), torch.from_numpy(txt), 4.0)
    assert grouped.dtype == torch.float64 and grouped.shape == (3, 5, 7)
    # numpy rounds exp(logit_scale) to float32, torch keeps float64 here: agreement to ~1e-6
    np.testing.assert_allclose(grouped.numpy(), class_scores_np(img.reshape(15, 8), txt, 4.0).reshape(3, 5, 7),
                               rtol=1e-5)
    half = class_scores_torch(torch.from_numpy(img).bfloat16(), torch.from_numpy(txt).bfloat16(), 4.0)
    assert half.dtype == torch.bfloat16
