"""The torch crop path (the one ``--decode gpu`` runs on the GPU), run here on CPU tensors: the same geometry as
the PIL path, the same pixels to <= 1 grey level, the same scores through the shipped tiny CLIP."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cdul_rt.bench.images import photo_like
from cdul_rt.crops import image_crops
from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, normalize_batch

torch = pytest.importorskip("torch")

from cdul_rt.devicecrops import crops_uint8, device_crops, normalize, resize_like_pil, view_plan  # noqa: E402

# the target for the device crops vs the CPU crops, in grey levels (mean over all values)
MEAN_TARGET = 1.0


def photo_jpeg(width: int, height: int, seed: int, **save) -> bytes:
    buf = io.BytesIO()
    photo_like(width, height, np.random.default_rng(seed)).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    """The pixels both paths start from (PIL's decode; torchvision's CPU decode gives the same, tested below)."""
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def chw(a: np.ndarray):
    return torch.from_numpy(a).permute(2, 0, 1)


def test_view_plan_hand_computed():
    """640x480, S=224, 3x3: torchvision's Resize truncates (213.99.. -> 299 px), CenterCrop rounds half to even."""
    plan = view_plan(640, 480, 3, PreprocessConfig(size=224))
    assert len(plan) == 10
    assert plan[0].box == (0, 0, 640, 480) and plan[0].resize == (298, 224) and plan[0].offset == (37, 0)
    assert plan[1].box == (0, 0, 213, 160) and plan[1].resize == (298, 224) and plan[1].offset == (37, 0)
    # 224 * 214 / 160 = 299.6 -> 299 (truncated); (299 - 224) / 2 = 37.5 -> 38 (round half to even)
    assert plan[2].box == (213, 0, 427, 160) and plan[2].resize == (299, 224) and plan[2].offset == (38, 0)
    assert plan[9].box == (427, 320, 640, 480)
    squash = view_plan(640, 480, 3, PreprocessConfig(size=224, resize_mode="squash"))
    assert squash[0].resize == (224, 224) and squash[0].offset is None
    same = view_plan(224, 300, 1, PreprocessConfig(size=224))[0]  # short side already S: no resize, crop only
    assert same.resize is None and same.offset == (0, 38)


@pytest.mark.parametrize("size_wh", [(640, 480), (480, 640), (1024, 768), (101, 77), (37, 53), (224, 224)])
@pytest.mark.parametrize("grid,s", [(3, 224), (3, 64), (4, 32)])
def test_crops_match_pil_on_photo_like_jpegs(size_wh, grid, s):
    """Down- and upscaled views, odd sizes, portrait: ~0 grey levels on average; at most 2 (a few values on the
    border rows of upscaled tiles, where PIL and torch normalise the edge weights differently), else 1."""
    cfg = PreprocessConfig(size=s)
    a = decoded(photo_jpeg(*size_wh, seed=sum(size_wh) + grid))
    ref = image_crops(Image.fromarray(a), grid, cfg).astype(np.int16)
    got = crops_uint8([chw(a)], [view_plan(*size_wh, grid, cfg)], cfg).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got.astype(np.int16) - ref)
    assert got.shape == ref.shape
    assert diff.max() <= 2 and diff.mean() <= 0.01 * MEAN_TARGET


def test_two_pass_resize_matches_pil_on_noise():
    """The hardest input for a resampler (hard edges everywhere): PIL's two passes clip to uint8 in between."""
    a = np.random.default_rng(0).integers(0, 256, (77, 101, 3), dtype=np.uint8)
    for size in ((50, 40), (300, 224), (101, 20), (30, 77)):
        ref = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
        got = resize_like_pil(chw(a)[None], size)[0].permute(1, 2, 0).numpy().astype(np.int16)
        assert np.abs(got - ref).max() <= 1, size


@pytest.mark.parametrize("cfg,max_levels", [
    (PreprocessConfig(size=64, resize_mode="squash"), 1),
    # PIL's bilinear rounds its fixed-point weights differently: measured max 2, mean 0.025
    (PreprocessConfig(size=64, interpolation="bilinear"), 2),
])
def test_bilinear_and_squash_match_pil(cfg, max_levels):
    a = decoded(photo_jpeg(300, 200, seed=3))
    ref = image_crops(Image.fromarray(a), 3, cfg).astype(np.int16)
    got = crops_uint8([chw(a)], [view_plan(300, 200, 3, cfg)], cfg).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got.astype(np.int16) - ref)
    assert diff.max() <= max_levels and diff.mean() <= 0.05 * MEAN_TARGET


def test_mixed_batch_keeps_order_and_pixels():
    """Views of equal size across images share one resize call; each image's crops stay its own, in order."""
    cfg = PreprocessConfig(size=32)
    sizes = [(64, 48), (48, 64), (64, 48), (50, 50), (64, 48)]
    images = [chw(decoded(photo_jpeg(w, h, seed=i))) for i, (w, h) in enumerate(sizes)]
    plans = [view_plan(w, h, 3, cfg) for w, h in sizes]
    batch = crops_uint8(images, plans, cfg)
    assert batch.shape == (50, 3, 32, 32)
    for i, (im, plan) in enumerate(zip(images, plans)):
        assert torch.equal(batch[i * 10:(i + 1) * 10], crops_uint8([im], [plan], cfg))


def test_normalize_is_the_cpu_normalisation():
    crops = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    cfg = PreprocessConfig(size=16)
    ref = normalize_batch(crops, cfg)
    got = normalize(torch.from_numpy(crops).permute(0, 3, 1, 2), cfg).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert normalize(torch.from_numpy(crops).permute(0, 3, 1, 2), cfg, torch.bfloat16).dtype == torch.bfloat16


def test_refusals_say_what_to_do():
    a = chw(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(CdulError, match="--decode cpu"):
        device_crops([a], 3, PreprocessConfig(size=16, interpolation="lanczos"))
    with pytest.raises(CdulError, match="too small for a 3x3 grid"):  # the CPU path's own words
        view_plan(2, 40, 3, PreprocessConfig(size=16))


def test_torchvision_cpu_decode_gives_pil_pixels():
    """So on CPU tensors the device path and the PIL path start from the same pixels (baseline, progressive)."""
    from cdul_rt.devicedecode import decode_jpegs

    for save in ({}, {"progressive": True}):
        data = photo_jpeg(120, 90, seed=5, **save)
        (t,) = decode_jpegs([data], "cpu")
        assert np.array_equal(t.permute(1, 2, 0).numpy(), decoded(data))


@pytest.fixture(scope="module")
def tiny_session():
    from cdul_rt.pipeline import LabelConfig, open_session
    from cdul_rt.vocab import load_vocabulary

    cfg = LabelConfig(input=".", out="x.jsonl", model="cdul-tiny", classes="coco", runtime="torch")  # device path
    return open_session(cfg, load_vocabulary("coco"))


def score_parity(session, n: int = 12, grid: int = 3) -> tuple[float, float, float]:
    """(S_final max |diff|, top-1 agreement, S_final spread) of the device crops vs the CPU crops, n photos."""
    pp = session.preprocess
    arrays = [decoded(photo_jpeg(160 + 16 * (i % 3), 120 + 8 * (i % 4), seed=100 + i)) for i in range(n)]
    cpu = normalize_batch(np.concatenate([image_crops(Image.fromarray(a), grid, pp) for a in arrays]), pp)
    dev = device_crops([chw(a) for a in arrays], grid, pp)
    with session.runner as runner:
        ref = runner.infer({"crops": cpu, "text_embeddings": session.text_embeddings})["S_final"]
        got = runner.infer_tensor(dev, session.text_embeddings)["S_final"]
    return (float(np.abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean()),
            float(ref.max() - ref.min()))


def test_scores_match_the_cpu_path_with_the_tiny_clip(tiny_session):
    max_diff, top1, spread = score_parity(tiny_session)
    assert top1 == 1.0
    assert max_diff <= 5e-3 * spread  # measured 5.5e-4 of a 0.48 spread (a few values 1 grey level off)


def test_infer_tensor_checks_shape(tiny_session):
    s = tiny_session.preprocess.size
    with tiny_session.runner as runner, pytest.raises(CdulError, match="crops must be"):
        runner.infer_tensor(torch.zeros(7, 3, s, s), tiny_session.text_embeddings)
