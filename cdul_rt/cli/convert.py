"""``cdul-rt convert``: export a label file to Label Studio, CVAT, FiftyOne or COCO."""

from __future__ import annotations

from pathlib import Path

import click

TARGETS = ("label-studio", "cvat", "fiftyone", "coco")
DEFAULT_OUT = {"label-studio": ".label-studio.json", "cvat": ".cvat.xml", "fiftyone": ".fiftyone", "coco": ".coco.json"}


@click.command("convert")
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(TARGETS), required=True,
              help="label-studio: tasks JSON with predictions + labeling config XML; cvat: CVAT for images 1.1 XML "
                   "with image tags; fiftyone: a FiftyOneImageClassificationDataset folder with confidences; "
                   "coco: COCO-style JSON with image-level categories.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output file (folder for fiftyone). Default: <LABELS> with .label-studio.json, .cvat.xml, "
                   ".fiftyone or .coco.json.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder the label file's paths are relative to. Default: the input recorded in its meta.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="label-studio: the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; image URLs become "
                   "/data/local-files/?d=<path under it>. Default: the image folder itself.")
@click.option("--url-prefix", default=None,
              help="label-studio: image URL = PREFIX/<relative path> (e.g. https://host/images or s3://bucket/x).")
@click.option("--threshold", type=float, default=None,
              help="Export classes scoring at least this (default: the threshold the label file was made with).")
@click.option("--top-k", type=int, default=None, help="Export the k best classes of each image instead.")
def command(labels: Path, target: str, out: Path | None, images: Path | None, image_root: Path | None,
            url_prefix: str | None, threshold: float | None, top_k: int | None) -> None:
    """Export LABELS for an annotation tool, so people can check and correct them there."""
    import math

    from cdul_rt.errors import CdulError, write_error
    from cdul_rt.handoff import FORMATS, load_handoff

    if top_k is not None and top_k < 1:
        raise CdulError(f"--top-k must be >= 1, got {top_k}")
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise CdulError(f"--threshold must be in [0, 1] (scores are probabilities), got {threshold}")
    if (image_root or url_prefix) and target != "label-studio":
        raise CdulError("--image-root and --url-prefix are for --to label-studio only")
    out = out or labels.with_name(labels.name + DEFAULT_OUT[target])
    if target == "fiftyone" and out.exists() and not out.is_dir():
        raise CdulError(f"--out {out} is a file; --to fiftyone writes a dataset folder: give a folder name")
    if target != "fiftyone" and out.is_dir():
        raise CdulError(f"--out {out} is a folder; --to {target} writes one file, e.g. "
                        f"{out / ('labels' + DEFAULT_OUT[target])}")
    handoff = load_handoff(labels, images, threshold, top_k)
    try:
        written = FORMATS[target](handoff, out, image_root=image_root, url_prefix=url_prefix)
    except OSError as exc:
        raise write_error(out, exc) from exc
    n_labels = sum(len(x) for x in handoff.labels)
    click.echo(f"{len(handoff.table.paths)} images, {n_labels} labels -> {', '.join(map(str, written))}")
