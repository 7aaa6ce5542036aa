"""Click options shared by several commands (model selection, vocabulary)."""

from __future__ import annotations

import click

from cdul_rt.presets import DEFAULT_MODEL
from cdul_rt.vocab import DEFAULT_TEMPLATE


def model_options(f):
    f = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="Local CLIP checkpoint file (offline use, or your own fine-tuned weights).")(f)
    f = click.option("--pretrained", default=None,
                     help="open_clip pretrained tag (default: 'openai' where it exists); 'none' = random weights.")(f)
    f = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                     help="open_clip architecture (`cdul-rt models`), ARCH.TAG, or an open_clip config JSON file.")(f)
    return f


def vocab_options(f):
    f = click.option("--template", default=DEFAULT_TEMPLATE, show_default=True,
                     help="Prompt template; '{}' is replaced by the class name.")(f)
    f = click.option("--classes", "-c", default="coco", show_default=True,
                     help="Vocabulary: coco, voc, nuswide, synth, a text file (one class per line) or 'a,b,c'.")(f)
    return f
