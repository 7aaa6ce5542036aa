"""`cdul-rt train`: gradient-alignment training of a ResNet on CLIP pseudo labels (CDUL section 3.2)."""

from __future__ import annotations

from pathlib import Path

import click

from cdul_rt.train.config import ARCHS, LOSSES, TrainConfig

_D = TrainConfig()  # defaults shown in --help come from the one config record


@click.command("train")
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoint.pt, metrics.jsonl, refined labels, curves.png, model.pt.")
@click.option("--arch", type=click.Choice(ARCHS), default=_D.arch, show_default=True,
              help="torchvision ResNet (the paper: resnet101; smaller ones for CPU).")
@click.option("--weights", default="auto", show_default=True,
              help="ImageNet backbone: a torchvision .pth file, 'auto' (torchvision cache if present, else random "
                   "init with a warning), 'none', or 'synth' (tiny-resnet's shipped synthetic pre-training). "
                   "Never downloads.")
@click.option("--image-size", type=int, default=_D.image_size, show_default=True,
              help="Whole image resized (no crop) to this square size.")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True, help="Total epochs (paper: 20).")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True, help="Paper: 16 (COCO), 8 (VOC).")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Adam learning rate (paper: 1e-5).")
@click.option("--weight-decay", type=float, default=_D.weight_decay, show_default=True)
@click.option("--warmup-epochs", type=int, default=_D.warmup_epochs, show_default=True,
              help="Epochs that train the network only, pseudo labels fixed (paper: 3).")
@click.option("--eta", type=float, default=_D.eta, show_default=True,
              help="Step size of the pseudo-label update ytilde <- ytilde - eta*psi(y_u)*dL/dy_u (eq. 7).")
@click.option("--sigma", type=float, default=_D.sigma, show_default=True, help="Width of psi around 0.5.")
@click.option("--c1", type=float, default=_D.c1, show_default=True, help="Scale of psi (c2 makes psi(0)=psi(1)=0).")
@click.option("--loss", type=click.Choice(LOSSES), default=_D.loss, show_default=True,
              help="Per-class Bernoulli KL (multi-label) or categorical KL on a softmax (option only).")
@click.option("--no-psi", is_flag=True, help="Ablation: psi == 1 (no Gaussian weighting).")
@click.option("--hard-labels", is_flag=True, help="Ablation: train on 0/1 labels [S_final >= --hard-threshold].")
@click.option("--hard-threshold", type=float, default=_D.hard_threshold, show_default=True)
@click.option("--no-alignment", is_flag=True, help="Baseline: never update the pseudo labels.")
@click.option("--hflip/--no-hflip", default=_D.hflip, show_default=True, help="Random horizontal flips.")
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: autocast forward/backward (2-3x faster on AMX CPUs and GPUs); loss and labels stay fp32.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--workers", type=int, default=0, show_default=True, help="Image-decoding worker processes.")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--gt", type=click.Path(exists=True, path_type=Path), default=None,
              help="Ground truth of the training images (VOC folder, COCO .json, .csv, .jsonl): per-epoch mAP of "
                   "the refined pseudo labels and of the predictions.")
@click.option("--val-images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Held-out images, evaluated each epoch (with --val-gt).")
@click.option("--val-gt", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--val-labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Pseudo labels of the held-out images (`cdul-rt label` with the same model and options): their "
                   "mAP is logged as map_pseudo_val, the bar the classifier's map_pred_val has to clear.")
@click.option("--eval-every", type=int, default=1, show_default=True,
              help="With --gt / --val-*: evaluate predictions every N epochs and at the last (one inference pass).")
@click.option("--labels-out", default="", help="File name of the refined labels in the run folder "
                                               "(default: refined_labels + the input's suffix).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(images: Path, labels: Path, run_dir: Path, **opts) -> None:
    """Train a multi-label classifier on pseudo labels LABELS (from `cdul-rt label`) of the images in IMAGES."""
    from cdul_rt.train.run import summary_lines, train_on_labels
    from cdul_rt.train.trainer import TrainInputs

    def log(message: str) -> None:
        click.echo(message, err=True)

    inputs = TrainInputs(images=images, labels=labels, run_dir=run_dir, gt=opts["gt"],
                         val_images=opts["val_images"], val_gt=opts["val_gt"], val_labels=opts["val_labels"],
                         labels_out=opts["labels_out"])
    summary = train_on_labels(TrainConfig(**config_fields(opts)), inputs, resume=opts["resume"], log=log)
    click.echo(summary_lines(summary))


# options that are the run's inputs or its mode, not TrainConfig fields; and flags that negate a field
NOT_CONFIG = ("resume", "gt", "val_images", "val_gt", "val_labels", "labels_out")
NEGATED = {"no_psi": "use_psi", "no_alignment": "alignment", "quiet": "progress"}


def config_fields(opts: dict) -> dict:
    """TrainConfig fields from this command's options (named as the fields, except the negating flags);
    ``weights`` stays the --weights request, which :func:`~cdul_rt.train.run.train_on_labels` resolves."""
    return {NEGATED.get(k, k): (not v if k in NEGATED else v) for k, v in opts.items() if k not in NOT_CONFIG}


def config_changes(flags: list[str]) -> dict:
    """The TrainConfig fields that ``cdul-rt train`` FLAGS set, parsed once by this command's own options (typed,
    checked, as the command takes them), for callers that pass options on to training as text from their own
    command line (``bench/training.py --extra``). Inputs and --resume are refused: they are not training options."""
    from click.core import ParameterSource

    from cdul_rt.errors import CdulError

    here = Path(__file__)  # stand-ins for the positional arguments the parser requires
    try:
        ctx = command.make_context("train", [str(here.parent), str(here), "--out", str(here.parent), *flags])
    except click.ClickException as exc:
        raise CdulError(f"`{' '.join(flags)}`: {exc.format_message()}") from None
    given = {k: v for k, v in ctx.params.items() if k not in ("images", "labels", "run_dir")
             and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if set(given) & set(NOT_CONFIG):
        names = ", ".join("--" + k.replace("_", "-") for k in sorted(set(given) & set(NOT_CONFIG)))
        raise CdulError(f"`{' '.join(flags)}`: training options only here, not {names}")
    return config_fields(given)
