"""`cdul-rt bench --quality`: label quality by runtime and precision on the synthetic world (issue 18 item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.bench.quality import compare, crop_scores, format_quality
from cdul_rt.cli import main


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_crop_scores_are_the_labelers_softmax():
    from cdul_rt.labeling import class_scores_np

    rng = np.random.default_rng(0)
    emb, text = _unit(rng.normal(size=(20, 8))).astype(np.float32), _unit(rng.normal(size=(5, 8))).astype(np.float32)
    ours = crop_scores(emb, text, 100.0, per_image=10)
    assert ours.shape == (2, 10, 5)
    np.testing.assert_allclose(ours.reshape(20, 5), class_scores_np(emb, text, np.log(100.0)), atol=1e-6)


def test_the_same_embedding_error_moves_scores_more_at_real_clips_logit_scale():
    """Why random-weight parity says little: exp(logit_scale) multiplies the cosine error before the softmax."""
    rng = np.random.default_rng(1)
    text = _unit(rng.normal(size=(12, 16)))
    emb = _unit(text[rng.integers(0, 12, 200)] + 0.8 * rng.normal(size=(200, 16)))  # near some class, not on it
    noisy = _unit(emb + 1e-3 * rng.normal(size=emb.shape))  # a bf16-sized rounding error

    def moved(scale: float) -> float:
        return float(np.abs(crop_scores(noisy, text, scale, 10) - crop_scores(emb, text, scale, 10)).max())

    assert moved(100.0) > 3 * moved(13.1) > 0  # measured 7x here
    targets = (rng.random((20, 12)) < 0.2).astype(np.int64)
    targets[:, 0] = 1 - targets[:, 1]  # every class has a positive and a negative somewhere
    same = compare(crop_scores(emb, text, 100.0, 10), crop_scores(emb, text, 100.0, 10), targets)
    assert same["s_final_max"] == 0 and same["top1_agreement"] == same["labels_agreement"] == 1.0
    assert set(same["map"]) == {"global", "avg", "max", "cdul"}
    other = compare(crop_scores(noisy, text, 100.0, 10), crop_scores(emb, text, 100.0, 10), targets)
    assert 0 < other["s_final_p99"] <= other["s_final_max"]


@pytest.mark.slow
def test_bench_quality_cli_on_the_synthetic_world(tmp_path):
    out = tmp_path / "quality.json"
    r = CliRunner().invoke(main, ["bench", "--quality", "--scenes", "16", "--json", str(out), "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["model"].startswith("cdul-tiny") and doc["scenes"] == 16
    scales = doc["scales"]
    assert [round(s["logit_scale_exp"], 1) for s in scales.values()] == [13.1, 100.0]
    for block in scales.values():
        rows = block["rows"]
        ref, ort = rows["torch/fp32/cpu"], rows["onnxruntime/fp32/cpu"]
        assert ref["s_final_max"] == 0 and ref["labels_agreement"] == 1.0
        # onnxruntime fp32 is the same computation: same labels, same mAP to 4 digits
        assert ort["s_final_max"] < 1e-4 and ort["labels_agreement"] == 1.0
        assert all(abs(ort["map"][m] - ref["map"][m]) < 1e-4 for m in ref["map"])
        for key in ("torch/bf16/cpu", "onnxruntime/fp16/cpu", "onnxruntime/int8/cpu"):
            assert rows[key]["status"] == "ok" and 0 < rows[key]["s_final_max"] < 1  # measured, and not garbage
        assert rows["torch/fp16/cuda"]["status"] in ("ok", "no GPU")
    assert "labels agree" in r.output and "real CLIP (100)" in r.output
    assert format_quality(doc, markdown=True).count("\n") == 1 + sum(len(b["rows"]) for b in scales.values())
