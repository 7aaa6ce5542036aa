"""Crop geometry (no pixel dropped, odd sizes) and preprocessing parity with open_clip's own transform."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cdul_rt.crops import crops_per_image, grid_boxes, grid_edges, image_crops
from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, normalize_batch, preprocess_uint8


@pytest.mark.parametrize("length,grid,expected", [
    (9, 3, [0, 3, 6, 9]),
    (10, 3, [0, 3, 7, 10]),    # 3.33 -> 3, 6.67 -> 7
    (11, 3, [0, 4, 7, 11]),    # 3.67 -> 4, 7.33 -> 7
    (5, 2, [0, 3, 5]),         # 2.5 rounds half-up to 3 (Python's round would give 2)
    (7, 1, [0, 7]),
])
def test_grid_edges_hand_computed(length, grid, expected):
    assert grid_edges(length, grid) == expected


@pytest.mark.parametrize("w,h,g", [(37, 53, 3), (224, 224, 3), (101, 7, 3), (640, 427, 4), (5, 5, 2)])
def test_grid_covers_every_pixel_exactly_once(w, h, g):
    cover = np.zeros((h, w), dtype=int)
    boxes = grid_boxes(w, h, g)
    assert len(boxes) == g * g
    for left, top, right, bottom in boxes:
        assert right > left and bottom > top
        cover[top:bottom, left:right] += 1
    assert (cover == 1).all()
    # row-major: first box top-left, last box bottom-right
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == (w, h)


def test_image_too_small_for_grid():
    with pytest.raises(CdulError, match="too small"):
        grid_boxes(2, 50, 3)


def test_crops_are_global_then_tiles():
    # left half red, right half blue; 2x2 grid -> tile 0 red, tile 1 blue
    a = np.zeros((40, 60, 3), dtype=np.uint8)
    a[:, :30, 0] = 255
    a[:, 30:, 2] = 255
    cfg = PreprocessConfig(size=16)
    crops = image_crops(Image.fromarray(a), 2, cfg)
    assert crops.shape == (5, 16, 16, 3) and crops.dtype == np.uint8
    assert crops[1, ..., 0].mean() > 250 and crops[1, ..., 2].mean() < 5
    assert crops[2, ..., 2].mean() > 250 and crops[2, ..., 0].mean() < 5
    assert crops[0, :, :3, 0].mean() > 250 and crops[0, :, -3:, 2].mean() > 250  # global: center crop of both


@pytest.mark.parametrize("size_hw", [(37, 53), (300, 200), (224, 224), (31, 32)])
@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_preprocess_matches_open_clip_transform(size_hw, interp):
    open_clip = pytest.importorskip("open_clip")
    cfg = PreprocessConfig(size=32, interpolation=interp)
    tf = open_clip.image_transform(32, is_train=False, mean=cfg.mean, std=cfg.std, interpolation=interp,
                                   resize_mode="shortest")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size_hw, 3), dtype=np.uint8))
    ours = normalize_batch(preprocess_uint8(img, cfg)[None], cfg)[0]
    theirs = tf(img).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_preprocess_config_roundtrip_and_validation():
    cfg = PreprocessConfig(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PreprocessConfig.from_dict({"size": (32, 32)}).size == 32
    with pytest.raises(CdulError):
        PreprocessConfig(resize_mode="longest")


@pytest.mark.parametrize("grid,expected", [(1, 2), (3, 10), (4, 17)])
def test_crops_per_image_is_the_global_view_plus_the_grid(grid, expected):
    assert crops_per_image(grid) == expected


# -- mutation survivors (issue 19 item 4): the grid limits and the crop buffer check --------------------------------
def test_grid_limits_are_inclusive_and_their_messages_say_what_to_do():
    from cdul_rt.crops import MAX_GRID, check_grid

    check_grid(1)
    check_grid(MAX_GRID)  # both ends are allowed
    with pytest.raises(CdulError) as low:
        check_grid(0)
    assert str(low.value) == "--grid must be >= 1, got 0"
    with pytest.raises(CdulError) as high:
        check_grid(MAX_GRID + 1)
    n = MAX_GRID + 1
    assert f"--grid {n} is above the maximum of {MAX_GRID}: it would make {1 + n * n} crops per image (memory and " \
           f"encoder time grow with g^2; the paper uses 3). Use --grid {MAX_GRID} or less." == str(high.value)


def test_an_image_exactly_as_wide_or_high_as_the_grid_has_one_pixel_tiles():
    assert grid_boxes(3, 3, 3)[4] == (1, 1, 2, 2)
    assert grid_boxes(3, 5, 3)[0] == (0, 0, 1, 2) and grid_boxes(5, 3, 3)[0] == (0, 0, 2, 1)
    with pytest.raises(CdulError, match="image of 3x2 px is too small for a 3x3 grid"):
        grid_boxes(3, 2, 3)


def test_crops_are_written_into_a_given_buffer_of_the_right_shape_and_dtype_only():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    cfg = PreprocessConfig(size=8)
    buf = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    assert image_crops(img, 2, cfg, out=buf) is buf
    np.testing.assert_array_equal(buf, image_crops(img, 2, cfg))
    for bad in (np.zeros((4, 8, 8, 3), np.uint8), np.zeros((5, 8, 8, 3), np.float32)):
        with pytest.raises(CdulError) as e:
            image_crops(img, 2, cfg, out=bad)
        assert str(e.value) == f"crop buffer must be uint8 (5, 8, 8, 3), got {bad.dtype} {bad.shape}"
