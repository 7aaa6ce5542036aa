"""``cdul-rt demo``: the whole pipeline offline on the synthetic world, in minutes on a laptop CPU.

Generates multi-object scenes, labels them with the shipped tiny CLIP (``cdul-rt label``, mode cdul), prints the
pseudo-label mAP of every aggregation mode against the ground truth (paper Table 3 in miniature), then trains a
small pre-trained ResNet on the pseudo labels with gradient alignment (``cdul-rt train``), beside the same run
without alignment, and shows the paper's second claim: the classifier ends above the pseudo labels it learned from
(scored on held-out scenes labeled the same way) and above the run without alignment, and the labels improve.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from cdul_rt.errors import CdulError

QUICK = {"scenes": 120, "val_scenes": 80, "epochs": 6}
# bench/training.py's configuration where all three of the paper's training claims hold over 15 seeds (BENCHMARKS.md
# "Training"): larger world, 20 epochs as the paper, and an lr at which the fixed-label run starts memorising
FULL = {"scenes": 800, "val_scenes": 160, "epochs": 20, "lr": 2e-4}
NO_ALIGNMENT_DIR = "run-no-alignment"


@click.command("demo")
@click.argument("out_dir", required=False, default="demo-out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scenes", type=int, default=240, show_default=True, help="Scenes to pseudo-label and train on.")
@click.option("--val-scenes", type=int, default=120, show_default=True, help="Held-out scenes for the classifier.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Classifier epochs (warm-up 3, then alignment).")
@click.option("--quick", is_flag=True, help=f"Small run ({QUICK['scenes']} + {QUICK['val_scenes']} scenes, "
                                            f"{QUICK['epochs']} epochs).")
@click.option("--full", is_flag=True, help=f"The benchmark's size ({FULL['scenes']} + {FULL['val_scenes']} scenes, "
                                           f"{FULL['epochs']} epochs, lr {FULL['lr']:g}; ~3 min on 2 cores).")
@click.option("--train/--no-train", "do_train", default=True, show_default=True,
              help="Also train and evaluate a classifier on the pseudo labels.")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help=f"Also train the same classifier without alignment (--no-alignment, in OUT_DIR/{NO_ALIGNMENT_DIR}) "
                   "and compare.")
@click.option("--weights", default="synth", show_default=True,
              help="Classifier backbone: 'synth' (tiny-resnet's shipped pre-training on single-object views, the "
                   "stand-in for ImageNet), 'none' (random initialisation) or a weights file.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Scene seed (held-out scenes use seed + 1) and training seed.")
@click.option("--lr", type=float, default=None,
              help="Adam learning rate of both runs [default: the recipe's, 1e-4]. BENCHMARKS.md 'Training': at "
                   "--scenes 800 --epochs 20, 2e-4 is where alignment beats fixed labels.")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
def demo(out_dir: Path, scenes: int, val_scenes: int, epochs: int, quick: bool, full: bool, do_train: bool,
         compare: bool, weights: str, seed: int, lr: float | None, threads: int) -> None:
    """Generate scenes, label them in every mode, train on the labels, print the mAP tables (into OUT_DIR)."""
    import torch

    from cdul_rt.synth.scenes import write_scene_folder
    from cdul_rt.train.synth_world import World, label_scenes

    if threads:
        torch.set_num_threads(threads)
    scenes, val_scenes, epochs, lr = demo_size(quick, full, scenes, val_scenes, epochs, lr)
    if scenes < 8 or (do_train and val_scenes < 8):
        raise CdulError("use at least 8 scenes (--scenes), and 8 held-out scenes (--val-scenes) when training")
    config = _recipe(epochs, weights, seed, threads, lr) if do_train else None  # a bad --lr stops here, before scenes
    train_dir = write_scene_folder(out_dir / "train", scenes, seed)
    click.echo(f"wrote {scenes} scenes to {train_dir / 'images'} (ground truth: {train_dir / 'labels.jsonl'})")
    labels = out_dir / "pseudo_labels.jsonl"
    seconds = label_scenes(train_dir / "images", labels)
    click.echo(f"labeled {scenes} images in {seconds:.1f}s -> {labels}")
    _print_mode_table(train_dir, labels)
    if not do_train:
        return
    val_dir = write_scene_folder(out_dir / "val", val_scenes, seed + 1)
    world = World(train_dir, val_dir, labels, out_dir / "val_pseudo_labels.jsonl")
    label_scenes(val_dir / "images", world.val_labels)
    click.echo(f"\nwrote and labeled {val_scenes} held-out scenes (seed {seed + 1}) -> {world.val_labels}")
    _train(world, out_dir, config, compare)


def demo_size(quick: bool, full: bool, scenes: int, val_scenes: int, epochs: int,
              lr: float | None) -> tuple[int, int, int, float | None]:
    """Scenes, held-out scenes, epochs and lr after the --quick / --full presets (an explicit --lr stays)."""
    if quick and full:
        raise CdulError("--quick and --full are two sizes: choose one")
    if quick:
        return QUICK["scenes"], QUICK["val_scenes"], QUICK["epochs"], lr
    if full:
        return FULL["scenes"], FULL["val_scenes"], FULL["epochs"], FULL["lr"] if lr is None else lr
    return scenes, val_scenes, epochs, lr


def _print_mode_table(scene_dir: Path, label_file: Path) -> None:
    """mAP of every mode, from one pass of per-crop scores; the label file's own mAP as a cross-check."""
    from PIL import Image

    from cdul_rt.aggregation import DEFAULT_LAM, DEFAULT_ZETA, TABLE3_ORDER
    from cdul_rt.groundtruth import load_ground_truth
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.metrics import mean_average_precision
    from cdul_rt.synth.classes import SYNTH_CLASSES
    from cdul_rt.synth.evaluate import class_text_embeddings, crop_scores, load_tiny_clip, mode_table

    table = read_label_file(label_file)
    targets = load_ground_truth(scene_dir / "labels.jsonl", table.paths, list(SYNTH_CLASSES)).targets
    bundle = load_tiny_clip()
    images = [Image.open(scene_dir / "images" / p).convert("RGB") for p in table.paths]
    scores = crop_scores(bundle, images, 3, class_text_embeddings(bundle))
    maps = mode_table(scores, targets, DEFAULT_ZETA, DEFAULT_LAM)
    click.echo(f"\npseudo-label mAP on {len(images)} scenes (tiny CLIP, 3x3 grid, zeta={DEFAULT_ZETA}, "
               f"lambda={DEFAULT_LAM}):")
    for mode in TABLE3_ORDER:
        click.echo(f"  {mode:<7} {100 * maps[mode]:5.1f}")
    click.echo(f"  cdul - global: {100 * (maps['cdul'] - maps['global']):+.1f} points")
    file_map = mean_average_precision(table.scores, targets, list(SYNTH_CLASSES)).map
    click.echo(f"  label file ({label_file.name}, mode cdul): {100 * file_map:.1f}")


def _recipe(epochs: int, weights: str, seed: int, threads: int, lr: float | None):
    """The demo's training config (``TrainConfig`` checks it, e.g. a non-positive --lr); None where training is not
    installed."""
    try:
        from cdul_rt.train.synth_world import recipe_config
    except ImportError:
        return None
    return recipe_config(epochs, weights=weights, seed=seed, threads=threads, **({} if lr is None else {"lr": lr}))


def _train(world, out_dir: Path, config, compare: bool) -> None:
    if config is None:
        click.echo("\n(training is not available in this install; skipped)")
        return
    from cdul_rt.train.synth_world import run_train, world_inputs

    click.echo(f"\ntraining with gradient alignment: {_describe(config)} -> {out_dir / 'run'}")
    rows = run_train(config, world_inputs(world, out_dir / "run"))
    baseline = None
    if compare:
        click.echo(f"\nthe same without alignment (labels fixed) -> {out_dir / NO_ALIGNMENT_DIR}")
        baseline = run_train(replace(config, alignment=False), world_inputs(world, out_dir / NO_ALIGNMENT_DIR))
    _print_epochs(rows, baseline)
    curves = out_dir / "curves.png"
    from cdul_rt.train.curves import plot_curves

    if plot_curves(rows, curves, title=f"cdul-rt demo: {len(_paths(world.labels))} training scenes, "
                                       f"{len(_paths(world.val_labels))} held-out", compare=baseline):
        click.echo(f"\ncurves: {curves} (and {out_dir / 'run' / 'curves.png'})")
    _print_story(rows, baseline, out_dir)


def _describe(config) -> str:
    """The run's recipe in words (cdul_rt.train.synth_world.RECIPE with this run's epochs, weights and seed)."""
    return (f"{config.arch} (weights {config.weights}), {config.image_size} px, batch {config.batch_size}, Adam lr "
            f"{config.lr:g}, warm-up {config.warmup_epochs} of {config.epochs} epochs, seed {config.seed}")


def _paths(label_file: Path) -> list[str]:
    return [line for line in label_file.read_text().splitlines() if line.strip()]


def _cell(row: dict | None, key: str, width: int) -> str:
    value = None if row is None else row.get(key)
    return ("-" if value is None else f"{100 * value:.1f}").rjust(width)


COLUMNS = (("labels", "map_pseudo"), ("clf train", "map_pred_train"), ("clf held-out", "map_pred_val"))


def _print_epochs(rows: list[dict], baseline: list[dict] | None) -> None:
    """One line per epoch: the refined labels and the classifier rising (mAP %, ground truth of the scenes)."""
    head = ["epoch", "phase       "] + [name for name, _ in COLUMNS] + ["label change"]
    if baseline:
        head.append("no-alignment held-out")
    click.echo("\nmAP (%) by epoch; epoch 0 = the initial pseudo labels; labels = the (refined) pseudo labels of the "
               "training scenes; clf = the classifier")
    click.echo("  ".join(head))
    by_epoch = {r["epoch"]: r for r in (baseline or [])}
    for row in rows:
        cells = [str(row["epoch"]).rjust(5), str(row.get("phase", "initial")).ljust(12)]
        cells += [_cell(row, key, len(name)) for name, key in COLUMNS]
        change = row.get("label_change")
        cells.append(("-" if change is None else f"{change:.4f}").rjust(len("label change")))
        if baseline:
            cells.append(_cell(by_epoch.get(row["epoch"]), "map_pred_val", len(head[-1])))
        click.echo("  ".join(cells))


def _print_story(rows: list[dict], baseline: list[dict] | None, out_dir: Path) -> None:
    """The last lines: the classifier against its initial pseudo labels and against the run without alignment."""
    first, last = rows[0], rows[-1]
    click.echo("")
    pred, bar = last.get("map_pred_val"), first.get("map_pseudo_val")
    if pred is not None and bar is not None:
        click.echo(f"held-out scenes: classifier {100 * pred:.1f} mAP vs its initial pseudo labels {100 * bar:.1f} "
                   f"on the same scenes ({100 * (pred - bar):+.1f})")
    if baseline and pred is not None:
        other = baseline[-1].get("map_pred_val")
        click.echo(f"held-out scenes: classifier {100 * pred:.1f} mAP vs {100 * other:.1f} without alignment "
                   f"({100 * (pred - other):+.1f}; {out_dir / NO_ALIGNMENT_DIR})")
        if other is not None and pred <= other:
            click.echo("  (alignment pays off where training on the fixed labels starts memorising their noise: "
                       "`cdul-rt demo --full`, ~3 min; 15 seeds in BENCHMARKS.md 'Training')")
    if first.get("map_pseudo") is not None:
        click.echo(f"training scenes: pseudo labels {100 * first['map_pseudo']:.1f} -> "
                   f"{100 * last['map_pseudo']:.1f} mAP after alignment "
                   f"({100 * (last['map_pseudo'] - first['map_pseudo']):+.1f}; {out_dir / 'run'})")
