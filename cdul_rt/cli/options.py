"""Click options shared by several commands (model selection, vocabulary, aggregation)."""

from __future__ import annotations

import click

from cdul_rt.aggregation import MODES, OPTIONS as AGGREGATION_OPTIONS, Aggregation
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


AGGREGATION_HELP = {
    "mode": "Aggregation: cdul (global-local max-min, the paper's), global, avg or max.",
    "zeta": "Snippet threshold: a class keeps its max snippet score when it reaches zeta, else its min.",
    "lam": "lambda in S_final = (S_global + S_ag + lambda*|S_global - S_ag|)/2; 1 = max, 0 = mean.",
}
# what the options mean for a command beyond labeling: formatted with the option's default
AGGREGATION_NOTES = {
    "label": {},
    "export": {"mode": " Baked into the labeler graph.",
               "zeta": " The folder's default; a graph input, so `label --zeta` can change it.",
               "lam": " The folder's default; a graph input, so `label --lam` can change it."},
    "serve": dict.fromkeys(AGGREGATION_OPTIONS, " Default {default}, or the --engine-dir folder's."),
}


def aggregation_options(command: str):
    """``--mode``, ``--zeta``, ``--lam``: the fields of :class:`~cdul_rt.aggregation.Aggregation`, with its
    defaults; for ``serve`` without one (unset: the artifact folder's, else the default)."""
    defaults = Aggregation()

    def add(f):
        for name in reversed(AGGREGATION_OPTIONS):
            default = getattr(defaults, name)
            kind = click.Choice(MODES) if name == "mode" else float
            note = AGGREGATION_NOTES[command].get(name, "").format(default=default)
            f = click.option(f"--{name}", type=kind, default=None if command == "serve" else default,
                             show_default=command != "serve", help=AGGREGATION_HELP[name] + note)(f)
        return f

    return add
