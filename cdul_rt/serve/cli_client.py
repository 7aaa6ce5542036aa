"""``cdul-rt label DIR --server URL``: the label command's options checked, then :func:`label_with_server`."""

from __future__ import annotations

from pathlib import Path

import click


def label_command_with_server(images: str, out: Path | None, quiet: bool, cluster: str, server: str,
                              in_flight: int, opts: dict) -> None:
    from cdul_rt.cli.label import given_options, report_summary
    from cdul_rt.pipeline import LabelConfig
    from cdul_rt.serve.client import SERVER_SIDE, label_with_server

    ctx = click.get_current_context()
    decided = sorted(given_options(ctx, SERVER_SIDE + ("cluster", "save_embeddings")))
    if decided:
        names = ", ".join("--" + n.replace("_", "-") for n in decided)
        raise click.UsageError(f"{names}: with --server the server decides these (its model, vocabulary and "
                               "options, recorded in the meta); give them to `cdul-rt serve`, or label locally "
                               "without --server")
    if not Path(images).exists():
        raise click.BadParameter(f"Path {images!r} does not exist.", param_hint="'IMAGES'")
    out = out or Path(images).with_name(Path(images).name.rstrip("/") + ".labels.jsonl")
    import dataclasses

    fields = {f.name for f in dataclasses.fields(LabelConfig)}  # the client-side ones matter (out, save_parts, ...)
    cfg = LabelConfig(input=Path(images), out=out, progress=not quiet,
                      **{k: v for k, v in opts.items() if k in fields and v is not None})
    summary = label_with_server(cfg, server, in_flight)
    report_summary(summary, out, Path(f"{out}.failures.jsonl"))
