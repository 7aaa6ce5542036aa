"""PreprocessConfig (validation, dict round trip as stored in label-file meta) and the resize / crop / normalise steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, normalize_batch, preprocess_uint8, resize_shortest

tv = pytest.importorskip("torchvision.transforms")  # a core dependency; imported at collection (mutmut's fork server)


def test_unsupported_settings_are_refused_naming_the_choices():
    with pytest.raises(CdulError) as e:
        PreprocessConfig(interpolation="box")
    assert str(e.value) == "unsupported interpolation 'box'; use one of ['bicubic', 'bilinear', 'lanczos', 'nearest']"
    with pytest.raises(CdulError) as e:
        PreprocessConfig(resize_mode="longest")
    assert str(e.value) == "unsupported resize_mode 'longest'; cdul-rt supports 'shortest' and 'squash'"
    for interpolation in ("bicubic", "bilinear", "nearest", "lanczos"):
        for mode in ("shortest", "squash"):
            assert PreprocessConfig(interpolation=interpolation, resize_mode=mode).resize_mode == mode


def test_to_dict_is_what_json_gives_back():
    # the dict is recorded in label-file meta and compared with the JSON read back on --resume: tuples would differ
    cfg = PreprocessConfig(size=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear",
                           resize_mode="squash")
    d = cfg.to_dict()
    assert d == {"size": 64, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bilinear",
                 "resize_mode": "squash"}
    assert json.loads(json.dumps(d)) == d
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_from_dict_fills_defaults_and_reads_every_field():
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    cfg = PreprocessConfig.from_dict({"size": [48, 48], "mean": [0, 1, 1], "std": ["0.5", 2, 2],
                                      "interpolation": "nearest", "resize_mode": "squash"})
    assert cfg == PreprocessConfig(size=48, mean=(0.0, 1.0, 1.0), std=(0.5, 2.0, 2.0), interpolation="nearest",
                                   resize_mode="squash")
    assert all(type(x) is float for x in cfg.mean + cfg.std) and type(cfg.size) is int
    assert PreprocessConfig.from_dict({"size": "32"}).size == 32
    assert PreprocessConfig.from_dict({"mean": [0.5, 0.5, 0.5]}).std == PreprocessConfig().std
    with pytest.raises(CdulError) as e:
        PreprocessConfig.from_dict({"size": [32, 48]})
    assert str(e.value) == "non-square model input [32, 48] is not supported"


@pytest.mark.parametrize("wh,expected", [
    ((100, 200), (32, 64)),
    ((200, 100), (64, 32)),
    ((50, 50), (32, 32)),
    ((33, 50), (32, 48)),  # 48.48 truncated, like torchvision's Resize
    ((50, 33), (48, 32)),
    ((47, 100), (32, 68)),  # 68.09
])
def test_the_short_side_becomes_the_size_and_the_long_side_is_truncated(wh, expected):
    assert resize_shortest(*wh, 32) == expected


def _noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("interpolation", ["nearest", "lanczos", "bicubic"])
@pytest.mark.parametrize("wh", [(40, 23), (23, 40), (51, 30), (16, 16), (16, 30)])
def test_shortest_is_torchvision_resize_then_center_crop(interpolation, wh):
    cfg = PreprocessConfig(size=16, interpolation=interpolation)
    mode = getattr(tv.InterpolationMode, interpolation.upper())
    img = _noise(*wh)
    want = np.asarray(tv.CenterCrop(16)(tv.Resize(16, interpolation=mode)(img)))
    np.testing.assert_array_equal(preprocess_uint8(img, cfg), want)


def test_squash_resizes_both_sides_to_the_size_without_cropping():
    img = _noise(40, 20)
    cfg = PreprocessConfig(size=16, resize_mode="squash", interpolation="bilinear")
    got = preprocess_uint8(img, cfg)
    np.testing.assert_array_equal(got, np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR)))


def test_non_rgb_images_come_out_as_rgb():
    grey = _noise(16, 16, "L")
    out = preprocess_uint8(grey, PreprocessConfig(size=16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], np.asarray(grey))
    rgba = _noise(16, 16, "RGBA")
    np.testing.assert_array_equal(preprocess_uint8(rgba, PreprocessConfig(size=16)), np.asarray(rgba)[..., :3])


def test_normalize_batch_joins_parts_in_order_and_applies_mean_and_std_per_channel():
    cfg = PreprocessConfig(size=4, mean=(0.1, 0.5, 0.9), std=(0.2, 0.25, 0.5))
    rng = np.random.default_rng(2)
    a, b, c = (rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8) for n in (2, 3, 1))
    joined = normalize_batch(np.concatenate([a, b, c]), cfg)
    assert joined.shape == (6, 3, 4, 4) and joined.dtype == np.float32
    want = (np.concatenate([a, b, c]).transpose(0, 3, 1, 2) / 255.0 - np.array(cfg.mean)[:, None, None]) \
        / np.array(cfg.std)[:, None, None]
    np.testing.assert_allclose(joined, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(normalize_batch([a, b, c], cfg), joined)
    np.testing.assert_array_equal(normalize_batch((p for p in [a, b, c]), cfg), joined)
    empty = normalize_batch([], cfg)
    assert empty.shape == (0, 3, 4, 4) and empty.dtype == np.float32
