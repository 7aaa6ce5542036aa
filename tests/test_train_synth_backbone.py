"""The synthetic stand-in for ImageNet pre-training: balanced deterministic views; output loads with --weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from cdul_rt.train.model import build_classifier  # noqa: E402
from cdul_rt.train.synth_backbone import main, render_views  # noqa: E402


def test_views_are_balanced_and_deterministic():
    a, ya = render_views(24, 32, seed=3)
    b, yb = render_views(24, 32, seed=3)
    assert a.shape == (24, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.bincount(ya).tolist() == [2] * 12
    assert not np.array_equal(a, render_views(24, 32, seed=4)[0])


def test_backbone_file_loads_as_train_weights(tmp_path):
    out = tmp_path / "bb.pth"
    result = CliRunner().invoke(main, ["--out", str(out), "--images", "24", "--size", "32", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    model = build_classifier("resnet18", 3, str(out))
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    assert json.loads((tmp_path / "bb.pth.json").read_text())["images"] == 24
