"""The synthetic world: a procedural multi-object image generator and a tiny CLIP trained on it.

Importing this package stays light (no numpy, PIL or torch); the generator lives in `cdul_rt.synth.scenes`,
the tiny CLIP's training in `cdul_rt.synth.train_clip`.
"""

from pathlib import Path

from cdul_rt.synth.classes import SYNTH_CLASSES

TINY_CLIP_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_clip"
# open_clip model config (model_configs/*.json schema); register with open_clip.add_model_config(TINY_CLIP_CONFIG),
# then open_clip.create_model(TINY_CLIP_NAME, pretrained=str(TINY_CLIP_WEIGHTS)).
TINY_CLIP_NAME = "cdul-tiny"
TINY_CLIP_CONFIG = TINY_CLIP_DIR / "cdul-tiny.json"
# fp16 state dict (torch.save), loadable by open_clip's load_checkpoint.
TINY_CLIP_WEIGHTS = TINY_CLIP_DIR / "cdul-tiny.pth"
# Seed, steps, accuracy and timings of the shipped weights.
TINY_CLIP_TRAIN_RECORD = TINY_CLIP_DIR / "cdul-tiny.train.json"
# The prompt template the tiny CLIP was trained with (the paper's default).
TINY_CLIP_TEMPLATE = "a photo of the {}"

__all__ = [
    "SYNTH_CLASSES",
    "TINY_CLIP_CONFIG",
    "TINY_CLIP_DIR",
    "TINY_CLIP_NAME",
    "TINY_CLIP_TEMPLATE",
    "TINY_CLIP_TRAIN_RECORD",
    "TINY_CLIP_WEIGHTS",
]
