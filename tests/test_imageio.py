"""Decoding every kind of file users have: modes, EXIF, formats, and broken files as reasons (never crashes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cdul_rt.decode import load_crops
from cdul_rt.imageio import discover_images, open_rgb
from cdul_rt.preprocess import PreprocessConfig

from conftest import make_broken


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "P", "RGBA", "LA", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        img = Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100))
    elif mode in ("I", "F"):
        img = Image.fromarray(np.arange(600).reshape(20, 30).astype(np.int32 if mode == "I" else np.float32))
    fmt = {"CMYK": "tiff", "YCbCr": "jpeg", "F": "tiff", "I": "tiff"}.get(mode, "png")
    path = _save(tmp_path / f"x.{fmt}", img)
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.full((4, 4), 65535, dtype=np.uint16)
    a[:2] = 32768
    path = _save(tmp_path / "x16.png", Image.fromarray(a))
    out = np.asarray(open_rgb(path))
    assert out[3, 0, 0] == 255 and 126 <= out[0, 0, 0] <= 129  # half range stays half, not clipped to 255


def test_alpha_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    path = _save(tmp_path / "t.png", Image.fromarray(a, "RGBA"))
    assert (np.asarray(open_rgb(path)) == 255).all()


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 40, 3), dtype=np.uint8))  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert open_rgb(path).size == (10, 40)  # displayed tall


def test_gif_first_frame_and_webp_bmp_tiff(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(open_rgb(tmp_path / "a.gif"))[0, 0, 0] > 200  # red: the first frame
    for ext in ("webp", "bmp", "tiff"):
        frames[1].save(tmp_path / f"b.{ext}")
        assert open_rgb(tmp_path / f"b.{ext}").size == (8, 8)


def test_discovery_is_recursive_sorted_and_filtered(tmp_path):
    for name in ("b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.tiff", "notes.txt", ".hidden.png", "e.gif"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path)]
    assert found == ["a.png", "b.JPG", "e.gif", "sub/c.webp", "sub/deeper/d.tiff"]


def test_broken_files_become_reasons(tmp_path):
    names = make_broken(tmp_path)
    cfg = PreprocessConfig(size=16)
    reasons = {n: load_crops(tmp_path / n, 3, cfg).error for n in names}
    assert reasons["broken_text.jpg"].startswith("not an image")
    assert reasons["broken_empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["broken_truncated.jpg"].lower()


def test_decompression_bomb_limit(tmp_path):
    path = _save(tmp_path / "big.png", Image.new("RGB", (200, 200)))
    result = load_crops(path, 3, PreprocessConfig(size=16), max_pixels=10_000)
    assert result.crops is None and "decompression bomb" in result.error
    assert load_crops(path, 3, PreprocessConfig(size=16), max_pixels=50_000).crops.shape == (10, 16, 16, 3)
