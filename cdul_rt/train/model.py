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
    The DEFAULT weights are preferred; any other cached ImageNet variant is accepted.
    """
    import torch
    import torchvision.models as tvm

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
    "none": random init. Anything else must be an existing file.
    """
    if weights in (None, "auto"):
        cached = cached_imagenet_weights(arch)
        return (str(cached), f"ImageNet weights from the torchvision cache ({cached})") if cached else ("none", "")
    if weights == "none":
        return "none", "random initialisation (--weights none)"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CdulError(f"--weights file not found: {path}; give a torchvision ResNet state dict (.pth) or 'none'")
    return str(path.resolve()), f"weights from {path}"


def build_classifier(arch: str, num_classes: int, weights: str = "none") -> "torch.nn.Module":
    """ResNet ``arch`` with a new ``fc`` of ``num_classes`` outputs; backbone from ``weights`` (path or "none")."""
    import torch
    import torchvision.models as tvm

    model = getattr(tvm, arch)(weights=None)
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
