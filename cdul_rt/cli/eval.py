"""`cdul-rt eval`: mAP and per-class AP of a label / prediction file against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval")
@click.option("--pred", "pred", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label or prediction file (.jsonl, .csv, .parquet, .npz from `label`, `train` or `predict`).")
@click.option("--gt", "gt", required=True, type=click.Path(exists=True, path_type=Path),
              help="Ground truth: a VOC folder (Annotations/*.xml), a COCO instances .json, or a .csv / .jsonl of "
                   "label sets (rows {\"path\": ..., \"labels\": [...]}).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(pred: Path, gt: Path, as_json: bool) -> None:
    """mAP (mean over classes with at least one positive) and per-class AP; AP as scikit-learn computes it."""
    from cdul_rt.groundtruth import load_ground_truth
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.metrics import mean_average_precision

    from cdul_rt.metrics import check_predictions

    table = read_label_file(pred)
    scores, warnings = check_predictions(table.paths, table.scores, str(pred))
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    truth = load_ground_truth(gt, table.paths, table.classes)
    result = mean_average_precision(scores, truth.targets, table.classes)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "pred": str(pred), "gt": str(gt), "gt_format": truth.source_kind,
                               "notes": truth.notes}, indent=2))
        return
    width = max(len(c) for c in table.classes)
    for name, ap in result.per_class.items():
        click.echo(f"{name:<{width}}  {100 * ap:6.2f}")
    click.echo(f"{'mAP':<{width}}  {100 * result.map:6.2f}   ({len(result.per_class)} classes, "
               f"{result.num_images} images, ground truth: {truth.source_kind})")
    if result.excluded:
        click.echo(f"excluded (no positive in the ground truth): {', '.join(result.excluded)}")
    for note in truth.notes:
        click.echo(f"note: {note}")
