"""Model presets: open_clip architectures and pretrained tags, the shipped tiny CLIP, and custom config files.

A preset is frozen, typed data keyed ``arch.tag`` (timm's PretrainedCfg style). Resolution is a thin factory:
parse the name -> look it up -> return a :class:`ModelSpec`; loading lives in :mod:`cdul_rt.models`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cdul_rt.errors import CdulError, did_you_mean

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
RANDOM = "none"  # --pretrained none: random (seeded) weights, for speed tests and tiny test models


@dataclass(frozen=True)
class ModelPreset:
    """One listed model: an architecture and a weights tag."""

    arch: str
    tag: str
    source: str  # "open_clip" (weights from its hub/URL) or "shipped" (files inside this package)
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.arch}.{self.tag}"


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an open_clip config (registered name or JSON file) and where its weights come from."""

    arch: str  # open_clip model name (for a JSON config: the file stem, registered with open_clip)
    pretrained: str  # open_clip tag, "none" for random, or "file" when weights_path is set
    config_path: Path | None = None
    weights_path: Path | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def display(self) -> str:
        if self.weights_path is not None:
            return f"{self.arch} ({self.weights_path.name})"
        return f"{self.arch}.{self.pretrained}"


def _shipped() -> list[tuple[ModelPreset, Path, Path]]:
    try:
        from cdul_rt.synth import TINY_CLIP_CONFIG, TINY_CLIP_WEIGHTS
    except ImportError:
        return []
    if not (Path(TINY_CLIP_CONFIG).is_file() and Path(TINY_CLIP_WEIGHTS).is_file()):
        return []
    preset = ModelPreset(Path(TINY_CLIP_CONFIG).stem, "synth", "shipped",
                         "tiny CLIP trained on the synthetic world (offline demo and tests)")
    return [(preset, Path(TINY_CLIP_CONFIG), Path(TINY_CLIP_WEIGHTS))]


def list_presets() -> list[ModelPreset]:
    """Every listed preset: shipped ones first, then open_clip's (arch, tag) pairs."""
    import open_clip

    presets = [p for p, _, _ in _shipped()]
    for arch, tag in open_clip.list_pretrained():
        note = "the paper's model" if (arch, tag) == ("RN50x64", "openai") else ""
        if (arch, tag) == (DEFAULT_MODEL, DEFAULT_PRETRAINED):
            note = "default"
        presets.append(ModelPreset(arch, tag, "open_clip", note))
    return presets


def _from_config_file(path: Path, pretrained: str | None, weights: Path | None) -> ModelSpec:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CdulError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise CdulError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)")
    if weights is None and pretrained != RANDOM:
        raise CdulError(f"{path.name} is a custom config without weights: give --weights FILE "
                        f"(or --pretrained {RANDOM} for random weights)")
    return ModelSpec(path.stem, "file" if weights else RANDOM, config_path=path, weights_path=weights)


def resolve_model(model: str, pretrained: str | None = None, weights: str | Path | None = None) -> ModelSpec:
    """Turn ``--model/--pretrained/--weights`` into a :class:`ModelSpec` (no torch, no download)."""
    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise CdulError(f"--weights file {weights_path} not found")
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise CdulError(f"model config file {model} not found")
        return _from_config_file(path, pretrained, weights_path)
    for preset, cfg_path, w_path in _shipped():
        if model in (preset.arch, preset.key):
            if pretrained == RANDOM:
                return ModelSpec(preset.arch, RANDOM, config_path=cfg_path)
            return ModelSpec(preset.arch, "file", config_path=cfg_path, weights_path=weights_path or w_path)
    import open_clip

    arch, tag = model, pretrained
    known = set(open_clip.list_models())
    if arch not in known and "." in model:
        arch, _, dotted_tag = model.rpartition(".")
        tag = tag or dotted_tag
    if arch not in known:
        names = sorted(known | {p.arch for p, _, _ in _shipped()})
        raise did_you_mean(model, names, "model", "`cdul-rt models` lists them; a custom config is --model FILE.json.")
    if weights_path is not None:
        return ModelSpec(arch, "file", weights_path=weights_path)
    tag = tag or (DEFAULT_PRETRAINED if (arch, DEFAULT_PRETRAINED) in open_clip.list_pretrained() else None)
    if tag is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        tag = tags[0] if tags else RANDOM
    if tag != RANDOM and tag not in open_clip.list_pretrained_tags_by_model(arch):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise did_you_mean(tag, tags, f"pretrained tag for {arch}",
                           f"Tags: {', '.join(tags) or 'none'}; or --pretrained {RANDOM} for random weights.")
    return ModelSpec(arch, tag)


@dataclass(frozen=True)
class ModelRequest:
    """``--model`` / ``--pretrained`` / ``--weights`` as given. :meth:`spec` is the one resolution to a
    :class:`ModelSpec` (the torch runtime and the exporter); an artifact folder is matched against the names
    without resolving them, so the onnxruntime path never imports open_clip."""

    name: str = DEFAULT_MODEL
    pretrained: str | None = None
    weights: str | None = None

    def spec(self) -> ModelSpec:
        return resolve_model(self.name, self.pretrained, self.weights)

    @property
    def config_file(self) -> Path | None:
        """The open_clip config JSON named by ``--model FILE.json``, else None."""
        return Path(self.name) if self.name.endswith(".json") else None

    @property
    def short_name(self) -> str:
        """The name a folder is matched by: a config file's stem, else the name as given."""
        return self.config_file.stem if self.config_file is not None else self.name
