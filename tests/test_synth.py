"""The synthetic world's generator: determinism, labels, class identity not tied to colour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.synth import SYNTH_CLASSES
from cdul_rt.synth.scenes import (STREAM_SCENE, item_rng, read_labels, render_scene, render_single, render_view,
                                  write_scene_folder)


def test_at_least_twelve_distinct_class_names():
    assert len(SYNTH_CLASSES) >= 12
    assert len(set(SYNTH_CLASSES)) == len(SYNTH_CLASSES)


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = np.asarray(render_single(3, item_rng(7, 0)))
    b = np.asarray(render_single(3, item_rng(7, 0)))
    c = np.asarray(render_single(3, item_rng(8, 0)))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    (s1, l1), (s2, l2) = render_scene(item_rng(1, 5)), render_scene(item_rng(1, 5))
    assert np.array_equal(np.asarray(s1), np.asarray(s2)) and l1 == l2


def test_scene_folder_is_regenerable_per_index(tmp_path):
    out = write_scene_folder(tmp_path / "s", n=4, seed=11, size=160, ext="png")
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [f"scene_{i:05d}.png" for i in range(4)]
    assert (out / "classes.txt").read_text().split("\n")[:-1] == list(SYNTH_CLASSES)
    # image 2 alone, from (seed, index), equals the file written in sequence
    img, labels = render_scene(item_rng(11, 2, STREAM_SCENE), size=160)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out / "images" / "scene_00002.png")), np.asarray(img))
    assert read_labels(out / "labels.jsonl")["scene_00002.png"] == labels


def test_scene_labels_are_distinct_known_classes_within_count_range():
    counts = []
    for i in range(30):
        img, labels = render_scene(item_rng(0, i), size=192, n_objects=(2, 4))
        assert img.size == (192, 192)
        assert len(set(labels)) == len(labels) and set(labels) <= set(SYNTH_CLASSES)
        assert labels == sorted(labels, key=SYNTH_CLASSES.index)
        counts.append(len(labels))
    assert min(counts) == 2 and max(counts) == 4


def test_view_draws_its_object_over_the_same_background():
    """The same generator state with and without a class gives the same background; the object changes pixels."""
    img = np.asarray(render_view(0, item_rng(0, 0), size=96), dtype=np.float32)
    bg = np.asarray(render_view(None, item_rng(0, 0), size=96), dtype=np.float32)
    assert np.abs(img - bg).mean() > 5.0


def test_colour_does_not_identify_the_class():
    """Mean object colours of two classes overlap: per-class mean colours over many images are close to grey."""
    means = []
    for c in (0, 5):
        imgs = [np.asarray(render_single(c, item_rng(3, i), size=48), dtype=np.float32) for i in range(40)]
        means.append(np.mean([im.mean(axis=(0, 1)) for im in imgs], axis=0))
    assert np.abs(means[0] - means[1]).max() < 25.0


def test_bad_arguments_raise_cdul_error(tmp_path):
    with pytest.raises(CdulError):
        render_scene(item_rng(0, 0), n_objects=(0, 3))
    with pytest.raises(CdulError):
        write_scene_folder(tmp_path, 1, 0, ext="gif")
