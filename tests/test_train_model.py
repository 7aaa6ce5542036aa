"""Classifier construction: ImageNet weights from a file or torchvision's cache (never downloaded), clear errors."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.train.config import TrainConfig  # noqa: E402
from cdul_rt.train.model import build_classifier, cached_imagenet_weights, resolve_weights  # noqa: E402


@pytest.fixture()
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _fake_imagenet(path, arch="resnet18"):
    torch.manual_seed(123)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()  # 1000-class fc like the real file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_cache_lookup_uses_torchvision_file_names(hub_dir):
    assert cached_imagenet_weights("resnet18") is None
    assert resolve_weights("resnet18", "auto") == ("none", "")
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = hub_dir / "checkpoints" / os.path.basename(urlparse(url).path)
    state = _fake_imagenet(cached)
    value, description = resolve_weights("resnet18", "auto")
    assert value == str(cached) and "torchvision cache" in description
    model = build_classifier("resnet18", 5, value)
    assert model.fc.out_features == 5
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_weights_file_errors(tmp_path):
    with pytest.raises(CdulError, match="not found"):
        resolve_weights("resnet50", str(tmp_path / "missing.pth"))
    wrong = tmp_path / "r18.pth"
    _fake_imagenet(wrong)
    with pytest.raises(CdulError, match="does not fit torchvision resnet50"):
        build_classifier("resnet50", 3, str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"nope")
    with pytest.raises(CdulError, match="cannot read weights"):
        build_classifier("resnet18", 3, str(garbage))
    assert resolve_weights("resnet18", "none")[0] == "none"


def test_config_rejects_bad_values():
    with pytest.raises(CdulError, match="--arch"):
        TrainConfig(arch="vgg16")
    with pytest.raises(CdulError, match="--sigma"):
        TrainConfig(sigma=0)
    assert TrainConfig().aligns_at(4) and not TrainConfig().aligns_at(3)
    assert not TrainConfig(alignment=False).aligns_at(10)


def test_hard_label_ablation_thresholds_the_scores():
    import numpy as np

    from cdul_rt.train.trainer import initial_pseudo_labels

    scores = np.array([[0.2, 0.5, 0.7]], np.float32)
    np.testing.assert_array_equal(initial_pseudo_labels(scores, TrainConfig()), scores)
    np.testing.assert_array_equal(initial_pseudo_labels(scores, TrainConfig(hard_labels=True)), [[0, 1, 1]])
    np.testing.assert_array_equal(
        initial_pseudo_labels(scores, TrainConfig(hard_labels=True, hard_threshold=0.6)), [[0, 0, 1]])
