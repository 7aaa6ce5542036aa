"""``cdul-rt report``: a static HTML page to review a label file (thumbnails, filters, plots, ground truth)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write. Default: <LABELS>.report.html next to it.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder the label file's paths are relative to. Default: the input recorded in its meta.")
@click.option("--gt", type=click.Path(exists=True, path_type=Path), default=None,
              help="Ground truth (VOC folder, COCO .json, .csv or .jsonl, as for `eval`): adds per-class AP, "
                   "precision-recall curves of the worst classes, false positives and misses per image.")
@click.option("--thumbs", type=click.Choice(["auto", "embed", "folder", "none"]), default="auto", show_default=True,
              help="embed: thumbnails inside the page (one file); folder: in <OUT stem>_files/ beside it; "
                   "auto: embed up to 500 images, else folder.")
@click.option("--workers", "-j", default=4, show_default=True, help="Threads making thumbnails.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(labels: Path, out: Path | None, images: Path | None, gt: Path | None, thumbs: str, workers: int,
            quiet: bool) -> None:
    """Write one self-contained HTML page (no server, no network) to review LABELS before trusting them:
    thumbnails with labels and scores (filter by class and score, sort, paged for 100,000 images), per-class
    counts and score histograms, the run's settings and failures; with --gt, AP and errors per image."""
    from cdul_rt.errors import write_error
    from cdul_rt.report.render import render_report

    out = out or labels.with_name(labels.name + ".report.html")
    try:
        summary = render_report(labels, out, images, gt, thumbs, workers, progress=not quiet)
    except OSError as exc:
        raise write_error(out, exc) from exc
    extra = f", mAP {100 * summary.mean_ap:.2f}" if summary.mean_ap is not None else ""
    click.echo(f"report of {summary.images} images ({summary.thumbnails} thumbnails, {summary.thumbs_mode}{extra}) "
               f"-> {out}")
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"open it: {out.resolve().as_uri()}")
