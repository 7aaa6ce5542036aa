"""``cdul-rt models`` and ``cdul-rt classes``: what can be used, without loading anything heavy."""

from __future__ import annotations

import click


@click.command("models")
@click.option("--filter", "pattern", default="", help="Only presets whose name contains this (case-insensitive).")
def models(pattern: str) -> None:
    """List model presets (ARCH.TAG). Use --model ARCH --pretrained TAG, or --model ARCH.TAG."""
    from cdul_rt.presets import list_presets

    rows = [p for p in list_presets() if pattern.lower() in p.key.lower()]
    width = max((len(p.key) for p in rows), default=10)
    click.echo(f"{'preset':<{width}}  {'source':<9}  note")
    for p in rows:
        click.echo(f"{p.key:<{width}}  {p.source:<9}  {p.note}")
    click.echo(f"\n{len(rows)} presets. Any model also runs from a config JSON (--model FILE.json --weights FILE).")


@click.command("classes")
@click.argument("vocabulary", default="coco")
@click.option("--template", default=None, help="Also print the prompts made with this template.")
def classes(vocabulary: str, template: str | None) -> None:
    """Print a vocabulary, one class per line (built-ins: coco, voc, nuswide, synth)."""
    from cdul_rt.vocab import load_vocabulary

    vocab = load_vocabulary(vocabulary)
    prompts = vocab.prompts(template) if template else vocab.prompt_names
    for name, prompt in zip(vocab.classes, prompts):
        click.echo(name if (prompt == name and not template) else f"{name}\t{prompt}")
