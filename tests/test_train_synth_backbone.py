"""The synthetic stand-in for ImageNet pre-training: balanced deterministic views; the script's output and the
shipped fp16 file load with --weights; the shipped file has learned the shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.train.model import (  # noqa: E402
    SYNTH_BACKBONE,
    TINY_RESNET,
    build_classifier,
    resolve_weights,
    tiny_resnet,
)
from cdul_rt.train.synth_backbone import _tensor, main, render_views  # noqa: E402


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
    assert state["conv1.weight"].dtype == torch.float16  # fp16 storage by default
    assert state["bn1.num_batches_tracked"].dtype == torch.int64
    model = build_classifier(TINY_RESNET, 3, str(out))
    assert model.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].float())
    assert model.fc.out_features == 3
    assert json.loads((tmp_path / "bb.pth.json").read_text())["images"] == 24


def test_shipped_backbone_is_small_resolves_as_synth_and_knows_the_shapes():
    assert SYNTH_BACKBONE.is_file() and SYNTH_BACKBONE.stat().st_size < 4 * 1024 * 1024
    assert resolve_weights(TINY_RESNET, "synth")[0] == str(SYNTH_BACKBONE)
    with pytest.raises(CdulError, match="--arch tiny-resnet"):
        resolve_weights("resnet18", "synth")
    record = json.loads(SYNTH_BACKBONE.with_name(SYNTH_BACKBONE.name + ".json").read_text())
    # held-out single-object views the file never saw (other seed than its training and evaluation draws)
    images, classes = render_views(96, record["size"], seed=record["seed"] + 17)
    trained, untrained = tiny_resnet(12), tiny_resnet(12)
    trained.load_state_dict(torch.load(SYNTH_BACKBONE, weights_only=True))
    accuracy = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        with torch.no_grad():
            pred = model.eval()(_tensor(images)).argmax(1).numpy()
        accuracy[name] = float((pred == classes).mean())
    assert accuracy["trained"] >= 0.5 and accuracy["untrained"] < 0.25, accuracy  # chance is 1/12
