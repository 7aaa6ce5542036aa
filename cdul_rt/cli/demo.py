"""``cdul-rt demo``: the whole pipeline offline on the synthetic world, in minutes on a laptop CPU.

Generates multi-object scenes, labels them with the shipped tiny CLIP (``cdul-rt label``, mode cdul), prints the
pseudo-label mAP of every aggregation mode against the ground truth (paper Table 3 in miniature), then trains a
small ResNet on the pseudo labels with gradient alignment (``cdul-rt train``) and evaluates it on held-out scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cdul_rt.errors import CdulError

QUICK = {"scenes": 48, "val_scenes": 32, "epochs": 2}


@click.command("demo")
@click.argument("out_dir", required=False, default="demo-out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scenes", type=int, default=240, show_default=True, help="Scenes to pseudo-label and train on.")
@click.option("--val-scenes", type=int, default=120, show_default=True, help="Held-out scenes for the classifier.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Classifier epochs (warm-up 3, then alignment).")
@click.option("--quick", is_flag=True, help=f"Small run ({QUICK['scenes']} + {QUICK['val_scenes']} scenes, "
                                            f"{QUICK['epochs']} epochs): about a minute.")
@click.option("--train/--no-train", "do_train", default=True, show_default=True,
              help="Also train and evaluate a classifier on the pseudo labels.")
@click.option("--weights", default="none", show_default=True,
              help="Classifier backbone for `cdul-rt train --weights` (e.g. a file from "
                   "`python -m cdul_rt.train.synth_backbone`); 'none' trains from random initialisation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Scene seed (held-out scenes use seed + 1).")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
def demo(out_dir: Path, scenes: int, val_scenes: int, epochs: int, quick: bool, do_train: bool, weights: str,
         seed: int, threads: int) -> None:
    """Generate scenes, label them in every mode, train on the labels, print the mAP tables (into OUT_DIR)."""
    import torch

    from cdul_rt.synth.scenes import write_scene_folder

    if threads:
        torch.set_num_threads(threads)
    if quick:
        scenes, val_scenes, epochs = QUICK["scenes"], QUICK["val_scenes"], QUICK["epochs"]
    if scenes < 8 or (do_train and val_scenes < 8):
        raise CdulError("use at least 8 scenes (--scenes), and 8 held-out scenes (--val-scenes) when training")
    train_dir = write_scene_folder(out_dir / "train", scenes, seed)
    click.echo(f"wrote {scenes} scenes to {train_dir / 'images'} (ground truth: {train_dir / 'labels.jsonl'})")
    labels = out_dir / "pseudo_labels.jsonl"
    _label(train_dir / "images", labels)
    _print_mode_table(train_dir, labels)
    if not do_train:
        return
    val_dir = write_scene_folder(out_dir / "val", val_scenes, seed + 1)
    _train(train_dir, val_dir, labels, out_dir / "run", epochs, weights, threads)


def _label(images: Path, out: Path) -> None:
    from cdul_rt.pipeline import LabelConfig, label_folder

    cfg = LabelConfig(input=images, out=out, classes="synth", model="cdul-tiny", workers=0, overwrite=True,
                      progress=False)
    summary = label_folder(cfg)
    click.echo(f"labeled {summary.labeled} images in {summary.seconds:.1f}s -> {out}")


def _print_mode_table(scene_dir: Path, label_file: Path) -> None:
    """mAP of every mode, from one pass of per-crop scores; the label file's own mAP as a cross-check."""
    from PIL import Image

    from cdul_rt.groundtruth import load_ground_truth
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.labeling import DEFAULT_LAMBDA, DEFAULT_ZETA
    from cdul_rt.metrics import mean_average_precision
    from cdul_rt.synth.classes import SYNTH_CLASSES
    from cdul_rt.synth.evaluate import MODES, class_text_embeddings, crop_scores, load_tiny_clip, mode_table

    table = read_label_file(label_file)
    targets = load_ground_truth(scene_dir / "labels.jsonl", table.paths, list(SYNTH_CLASSES)).targets
    bundle = load_tiny_clip()
    images = [Image.open(scene_dir / "images" / p).convert("RGB") for p in table.paths]
    scores = crop_scores(bundle, images, 3, class_text_embeddings(bundle))
    maps = mode_table(scores, targets, DEFAULT_ZETA, DEFAULT_LAMBDA)
    click.echo(f"\npseudo-label mAP on {len(images)} scenes (tiny CLIP, 3x3 grid, zeta={DEFAULT_ZETA}, "
               f"lambda={DEFAULT_LAMBDA}):")
    for mode in MODES:
        click.echo(f"  {mode:<7} {100 * maps[mode]:5.1f}")
    click.echo(f"  cdul - global: {100 * (maps['cdul'] - maps['global']):+.1f} points")
    file_map = mean_average_precision(table.scores, targets, list(SYNTH_CLASSES)).map
    click.echo(f"  label file ({label_file.name}, mode cdul): {100 * file_map:.1f}")


def _train(train_dir: Path, val_dir: Path, labels: Path, run_dir: Path, epochs: int, weights: str,
           threads: int) -> None:
    try:
        from cdul_rt.cli.train import command as train_command
    except ImportError:
        click.echo("\n(training is not available in this install; skipped)")
        return
    args = [str(train_dir / "images"), str(labels), "--out", str(run_dir), "--arch", "resnet18", "--weights", weights,
            "--image-size", "128", "--epochs", str(epochs), "--warmup-epochs", str(min(3, max(1, epochs - 1))),
            "--batch-size", "16", "--lr", "1e-3", "--gt", str(train_dir / "labels.jsonl"),
            "--val-images", str(val_dir / "images"), "--val-gt", str(val_dir / "labels.jsonl"), "--quiet"]
    if threads:
        args += ["--threads", str(threads)]
    click.echo(f"\ntraining: cdul-rt train {' '.join(args)}")
    train_command.main(args, standalone_mode=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = [k for k in rows[-1] if k.startswith("map_")]
    click.echo("\nmAP (%) by epoch (epoch 0: the initial pseudo labels)\nepoch  " + "  ".join(keys))
    for row in rows:
        cells = [f"{100 * row[k]:.1f}".rjust(len(k)) if k in row else "-".rjust(len(k)) for k in keys]
        click.echo(f"{row.get('epoch', '?'):>5}  " + "  ".join(cells))
