"""The classifier: a torchvision ResNet with a fresh ``fc`` of C outputs (logits; sigmoid applied outside).

ImageNet weights come from ``--weights FILE`` or torchvision's own cache (``$TORCH_HOME/hub/checkpoints``, where
``torchvision.models.ResNet*_Weights.*.get_state_dict()`` stores its downloads). Nothing is ever downloaded here:
with neither, the backbone starts from random weights and the caller warns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from cdul_rt.errors import CdulError

if TYPE_CHECKING:
    import torch

_WEIGHT_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}


def cached_imagenet_weights(arch: str) -> Path | None:
    """Path of a torchvision ImageNet checkpoint for ``arch`` already in the torch hub cache, or None.

    Mirrors ``torch.hub.load_state_dict_from_url``'s cache location: ``<hub dir>/checkpoints/<url basename>``.
    The DEFAULT weights are preferred; any other cached ImageNet variant is accepted. ``tiny-resnet`` has no
    ImageNet weights (its pre-training is the shipped synthetic one, ``SYNTH_BACKBONE``).
    """
    import torch
    import torchvision.models as tvm

    if arch not in _WEIGHT_ENUMS:
        return None
    enum = getattr(tvm, _WEIGHT_ENUMS[arch])
    candidates = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in candidates:
        path = folder / os.path.basename(urlparse(weights.url).path)
        if path.is_file():
            return path
    return None


def resolve_weights(arch: str, weights: str | None) -> tuple[str, str]:
    """Turn the ``--weights`` option into (config value, human description).

    ``None`` / "auto": the torchvision cache if it holds the arch's ImageNet weights, else "none".
    "none": random init. "synth": the shipped synthetic pre-training of tiny-resnet. Anything else must be an
    existing file.
    """
    if weights in (None, "auto"):
        cached = cached_imagenet_weights(arch)
        return (str(cached), f"ImageNet weights from the torchvision cache ({cached})") if cached else ("none", "")
    if weights == "none":
        return "none", "random initialisation (--weights none)"
    if weights == "synth":
        if arch != TINY_RESNET:
            raise CdulError(f"--weights synth is the shipped pre-training of --arch {TINY_RESNET}, not {arch}; "
                            f"pass --arch {TINY_RESNET}, a weights file or 'none'")
        if not SYNTH_BACKBONE.is_file():
            raise CdulError(f"the shipped backbone {SYNTH_BACKBONE} is missing; reinstall cdul-rt or regenerate it "
                            "with `python -m cdul_rt.train.synth_backbone --out` that path")
        return str(SYNTH_BACKBONE), "synthetic pre-training on single-object views (shipped, --weights synth)"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CdulError(f"--weights file not found: {path}; give a torchvision ResNet state dict (.pth) or 'none'")
    return str(path.resolve()), f"weights from {path}"


# A ResNet-10 (one BasicBlock per stage) at half of ResNet-18's widths: 1.2 M parameters, ~1/10 of ResNet-18's
# FLOPs, so the synthetic world's demo trains it on a laptop CPU in a minute. Same module names as torchvision's
# ResNets (conv1, bn1, layer1..4, fc), so --weights files load the same way.
TINY_RESNET = "tiny-resnet"
TINY_RESNET_WIDTHS = (32, 64, 128, 256)
# The synthetic stand-in for ImageNet pre-training of tiny-resnet (``--weights synth``), fp16;
# ``python -m cdul_rt.train.synth_backbone`` regenerates it (its record is the .json beside it).
SYNTH_BACKBONE = Path(__file__).resolve().parent.parent / "assets" / "backbone" / "tiny-resnet-synth.pth"


def tiny_resnet(num_classes: int = 1000) -> "torch.nn.Module":
    """torchvision's ResNet layout with BasicBlocks [1, 1, 1, 1] and widths ``TINY_RESNET_WIDTHS``."""
    import torch
    from torchvision.models.resnet import BasicBlock

    class TinyResNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w0 = TINY_RESNET_WIDTHS[0]
            self.conv1 = torch.nn.Conv2d(3, w0, 7, 2, 3, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(w0)
            self.relu = torch.nn.ReLU(inplace=True)
            self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
            width = w0
            for i, planes in enumerate(TINY_RESNET_WIDTHS):
                stride = 1 if i == 0 else 2
                down = None
                if stride != 1 or width != planes:
                    down = torch.nn.Sequential(torch.nn.Conv2d(width, planes, 1, stride, bias=False),
                                               torch.nn.BatchNorm2d(planes))
                setattr(self, f"layer{i + 1}", torch.nn.Sequential(BasicBlock(width, planes, stride, down)))
                width = planes
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(width, num_classes)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return TinyResNet()


def build_classifier(arch: str, num_classes: int, weights: str = "none") -> "torch.nn.Module":
    """ResNet ``arch`` with a new ``fc`` of ``num_classes`` outputs; backbone from ``weights`` (path or "none")."""
    import torch
    import torchvision.models as tvm

    model = tiny_resnet() if arch == TINY_RESNET else getattr(tvm, arch)(weights=None)
    if weights != "none":
        state = _load_state_dict(Path(weights))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("fc.")}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        reshaped = [k for k in own if k in state and state[k].shape != own[k]]
        if missing or unexpected or reshaped:
            raise CdulError(
                f"{weights} does not fit torchvision {arch}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(reshaped)} of another shape; "
                "pass the matching --arch"
            )
        model.load_state_dict(state, strict=False)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def _load_state_dict(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or non-torch file: say which file and why
        raise CdulError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CdulError(f"{path} is not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
