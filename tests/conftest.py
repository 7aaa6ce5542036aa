"""Shared fixtures: tiny open_clip configs (random weights, built by the tests) and generated image folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# A CLIP small enough to run in milliseconds; open_clip builds it from this JSON with random (seeded) weights.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# A script that runs the CLI with `import torch` failing (format with args=[...]): proves a path is torch-free.
BLOCK_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, in this process and its imports
sys.argv = ["cdul-rt"] + {args!r}
from cdul_rt.cli import main
try:
    main()
finally:
    assert sys.modules.get("torch") is None
"""


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Caches (text embeddings, hashes, exported engines) go to a temp dir, never the user's home."""
    old = os.environ.get("CDUL_RT_CACHE")
    os.environ["CDUL_RT_CACHE"] = str(tmp_path_factory.mktemp("cdul-cache"))
    yield
    if old is None:
        os.environ.pop("CDUL_RT_CACHE", None)
    else:
        os.environ["CDUL_RT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-test-clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


def make_images(folder: Path, n: int, seed: int = 0, sizes=((37, 53), (64, 48), (50, 50))) -> list[Path]:
    """Random-noise RGB images of a few (odd) sizes, some in a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        sub = folder / "sub" if i % 4 == 0 else folder
        sub.mkdir(exist_ok=True)
        p = sub / f"img_{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def make_broken(folder: Path) -> list[str]:
    """Three unreadable files: non-image bytes, zero bytes, a truncated JPEG."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken_text.jpg").write_bytes(b"this is not an image at all")
    (folder / "broken_empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "broken_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return ["broken_text.jpg", "broken_empty.png", "broken_truncated.jpg"]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    make_images(tmp_path / "images", 12)
    return tmp_path / "images"


def train_tiny_classifier(root: Path, classes: list[str], *train_args: str) -> tuple[Path, Path]:
    """``root/images`` (5 random 40x28 JPEGs), random scores for ``classes``, and a resnet18 trained on them for one
    epoch at 32 px with no pretrained weights into ``root/run`` (extra ``train`` options in ``train_args``).
    Returns (images folder, run folder)."""
    from click.testing import CliRunner
    from PIL import Image

    from cdul_rt.cli import main
    from cdul_rt.labelfile import write_label_file

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(4)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (28, 40, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    labels = write_label_file(root / "l.jsonl", [f"{i}.jpg" for i in range(5)], list(classes),
                              rng.random((5, len(classes))).astype(np.float32))
    run = root / "run"
    result = CliRunner().invoke(main, ["train", str(images), str(labels), "--out", str(run), "--arch", "resnet18",
                                       "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size",
                                       "5", "--threads", "1", "--quiet", *train_args])
    assert result.exit_code == 0, result.output
    return images, run
