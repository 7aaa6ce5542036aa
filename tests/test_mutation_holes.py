"""Tests for behaviour that a deliberate bug once slipped past (issue 19's mutation holes).

Each test names the bug it guards; each was checked by putting that bug into the code and watching it fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cdul_rt.cli import main
from cdul_rt.imageio import open_rgb
from cdul_rt.labelfile import select_labels

torch = pytest.importorskip("torch")


def _label(folder: Path, out: Path, tiny_config: Path, *extra: str) -> list[dict]:
    args = ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
            "--out", str(out), "-q", "--workers", "0", "--runtime", "torch", *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


# --- labels at the default --threshold (bug: `S_final < threshold` selects the wrong side) -------------------------

def test_select_labels_keeps_exactly_the_classes_at_or_above_the_threshold():
    classes = ["a", "b", "c", "d"]
    scores = np.array([0.7, 0.2, 0.5, 0.9], np.float32)
    assert select_labels(scores, classes, 0.5, None) == ["d", "a", "c"]  # at or above, best first
    assert select_labels(scores, classes, 0.95, None) == []
    assert select_labels(scores, classes, 0.0, None) == ["d", "a", "c", "b"]


@pytest.mark.slow
def test_label_threshold_path_labels_match_the_scores(tmp_path, image_folder, tiny_config):
    """The random tiny model's scores sit near 1/C; a threshold at their median splits every row's classes."""
    probe = _label(image_folder, tmp_path / "probe.jsonl", tiny_config)
    median = float(np.median([s for row in probe for s in row["scores"].values()]))
    rows = _label(image_folder, tmp_path / "thr.jsonl", tiny_config, "--threshold", f"{median:.9g}")
    kept = dropped = 0
    for row in rows:
        expect = {c for c, s in row["scores"].items() if s >= float(f"{median:.9g}")}
        assert set(row["labels"]) == expect, row["path"]
        kept, dropped = kept + len(expect), dropped + len(row["scores"]) - len(expect)
    assert kept > 0 and dropped > 0  # both sides of the threshold occur, so an inverted test cannot pass


# --- `label --mode` through the torch runtime (bug: the mode is ignored, always cdul) ------------------------------

@pytest.mark.slow
def test_every_mode_reaches_the_scores_through_label(tmp_path, image_folder, tiny_config):
    runs = {mode: _label(image_folder, tmp_path / f"{mode}.jsonl", tiny_config, "--mode", mode, "--save-parts")
            for mode in ("cdul", "global", "avg", "max")}

    def matrix(rows, key):
        return np.array([[row[key][c] for c in sorted(row[key])] for row in sorted(rows, key=lambda r: r["path"])])

    final = {m: matrix(rows, "scores") for m, rows in runs.items()}
    s_global, s_ag = matrix(runs["cdul"], "global"), matrix(runs["cdul"], "aggregate")
    spread = float(final["cdul"].std())
    assert spread > 0
    np.testing.assert_allclose(final["global"], s_global, atol=1e-6)  # global mode = the global view
    np.testing.assert_allclose(final["cdul"], np.maximum(s_global, s_ag), atol=1e-6)  # lambda 1: element-wise max
    # max over all 1+N crops >= the global view and every snippet (>= alpha >= S_ag)
    assert (final["max"] >= np.maximum(s_global, s_ag) - 1e-6).all()
    # avg of the crops lies between the min and max of the crops
    assert (final["avg"] <= final["max"] + 1e-6).all()
    for a in final:
        for b in final:
            if a < b:  # every pair of modes differs by much more than float noise
                assert np.abs(final[a] - final[b]).max() > 0.05 * spread, (a, b)
    for mode, rows in runs.items():
        meta = json.loads((tmp_path / f"{mode}.jsonl.meta.json").read_text())
        assert meta["config"]["mode"] == mode


# --- the text-embedding cache key (bug: key without the weights hash reuses another checkpoint's embeddings) --------

def test_text_cache_is_keyed_by_the_weights(tmp_path, tiny_config):
    from cdul_rt.models import load_clip, model_key
    from cdul_rt.presets import resolve_model
    from cdul_rt.textcache import encode_text_torch, text_embeddings
    from cdul_rt.vocab import DEFAULT_TEMPLATE, load_vocabulary

    vocab = load_vocabulary("cat,dog,car")
    base = load_clip(resolve_model(str(tiny_config), "none"))
    weights = tmp_path / "other.pt"
    gen = torch.Generator().manual_seed(1)
    torch.save({k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                for k, v in base.model.state_dict().items()}, weights)
    other = load_clip(resolve_model(str(tiny_config), weights=weights))
    first = text_embeddings(base, vocab, DEFAULT_TEMPLATE, model_key(base))
    second = text_embeddings(other, vocab, DEFAULT_TEMPLATE, model_key(other))
    direct = encode_text_torch(other, vocab.prompts(DEFAULT_TEMPLATE))
    np.testing.assert_allclose(second, direct, atol=1e-6)  # the other checkpoint's own embeddings, not a cache hit
    assert np.abs(first - second).max() > 1e-3


# --- alpha compositing (bug: LA and transparent-palette images no longer composited on white) ----------------------

def test_la_and_transparent_palette_are_composited_on_white(tmp_path):
    la = np.zeros((4, 6, 2), np.uint8)
    la[..., 0] = 30  # dark grey ...
    la[:, :3, 1] = 255  # ... opaque on the left half, fully transparent on the right
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = np.asarray(open_rgb(tmp_path / "la.png"))
    assert (out[:, :3] == 30).all() and (out[:, 3:] == 255).all()

    pal = Image.new("P", (6, 4), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(1, (0, 0, 3, 4))  # left half: palette index 1 (red), right half: index 0 (black, transparent)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(open_rgb(tmp_path / "p.png"))
    assert (out[:, :3] == [200, 10, 10]).all() and (out[:, 3:] == 255).all()


# --- the categorical label update (bug: the eq. 7 step with the wrong sign) ----------------------------------------

@pytest.mark.parametrize("loss", ["bernoulli", "categorical"])
def test_latent_update_lowers_the_loss_it_descends(loss):
    from cdul_rt.train.losses import bernoulli_kl, categorical_kl, latent_update

    kl = {"bernoulli": bernoulli_kl, "categorical": categorical_kl}[loss]
    gen = torch.Generator().manual_seed(0)
    ytilde = torch.randn(6, 5, generator=gen)
    logits = torch.randn(6, 5, generator=gen) * 2
    new = latent_update(ytilde, logits, eta=0.05, sigma=0.5, c1=1.0, use_psi=False, loss=loss)
    before, after = kl(torch.sigmoid(ytilde), logits), kl(torch.sigmoid(new), logits)
    assert after < before - 1e-4  # a descent step on L(y_u) with the predictions fixed
    # and the labels move toward the predictions' ranking, never away from it
    assert not torch.equal(new, ytilde)
