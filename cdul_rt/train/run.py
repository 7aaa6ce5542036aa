"""A training run from start (or --resume) to the deployable model, with its run-folder outputs.

Run folder: ``config.json``, ``checkpoint.pt`` (every epoch), ``metrics.jsonl`` (epoch 0 = initial pseudo labels),
``refined_labels.<fmt>`` (every epoch, same format as the input label file), ``curves.png``, ``model.pt``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.metrics import mean_average_precision
from cdul_rt.train import checkpoint as ckpt
from cdul_rt.train.config import TrainConfig
from cdul_rt.train.curves import plot_curves
from cdul_rt.train.data import ImageFolderDataset, fits_cache, resolve_image_files
from cdul_rt.train.infer import predict_dataset
from cdul_rt.train.trainer import (
    Log,
    RunState,
    TrainInputs,
    new_state,
    restore_state,
    resume_config,
    train_epoch,
)


class Evaluator:
    """mAP of pseudo labels / predictions on the training images (``--gt``) and on a held-out set (``--val-*``)."""

    def __init__(self, config: TrainConfig, train_files: Sequence[Path], train_paths: Sequence[str],
                 inputs: TrainInputs):
        from cdul_rt.groundtruth import load_ground_truth

        self.config = config
        self.classes = list(config.classes)
        self.train_files = list(train_files)
        self.train_targets = load_ground_truth(inputs.gt, train_paths, self.classes).targets if inputs.gt else None
        self.val_files: list[Path] = []
        self.val_targets = None
        if (inputs.val_images is None) != (inputs.val_gt is None):
            raise CdulError("--val-images and --val-gt go together; give both or neither")
        if inputs.val_images is not None:
            from cdul_rt.imageio import discover_images

            root = Path(inputs.val_images)
            self.val_files = list(discover_images(root))
            if not self.val_files:
                raise CdulError(f"--val-images {root} holds no images")
            rel = [f.relative_to(root).as_posix() for f in self.val_files]
            self.val_targets = load_ground_truth(inputs.val_gt, rel, self.classes).targets
        self.val_pseudo = self._val_pseudo_map(inputs)

    def _val_pseudo_map(self, inputs: TrainInputs) -> dict[str, float]:
        """mAP of the held-out images' own pseudo labels (``--val-labels``, same CLIP and aggregator as the training
        labels): the bar the classifier has to clear on the same images. Constant over epochs (never refined)."""
        if inputs.val_labels is None:
            return {}
        if self.val_targets is None:
            raise CdulError("--val-labels needs --val-images and --val-gt (it is scored on the held-out images)")
        from cdul_rt.labelfile import read_label_file

        table = read_label_file(inputs.val_labels)
        if list(table.classes) != self.classes:
            raise CdulError(f"--val-labels {inputs.val_labels} has other classes than the training labels; "
                            "label the held-out images with the same --classes")
        root = Path(inputs.val_images)
        rows = {p: i for i, p in enumerate(table.paths)}
        rel = [f.relative_to(root).as_posix() for f in self.val_files]
        missing = [p for p in rel if p not in rows]
        if missing:
            raise CdulError(f"--val-labels {inputs.val_labels} lacks {len(missing)} of the {len(rel)} held-out "
                            f"images (e.g. {missing[0]}); label the --val-images folder with `cdul-rt label`")
        scores = table.scores[[rows[p] for p in rel]]
        return {"map_pseudo_val": mean_average_precision(scores, self.val_targets, self.classes).map}

    @property
    def active(self) -> bool:
        return self.train_targets is not None or self.val_targets is not None

    def pseudo(self, y_u: np.ndarray) -> dict[str, float]:
        out = {}
        if self.train_targets is not None:
            out["map_pseudo"] = mean_average_precision(y_u, self.train_targets, self.classes).map
        return {**out, **self.val_pseudo}

    def datasets(self, train: ImageFolderDataset) -> None:
        """The datasets evaluated every epoch: the training one (``train``, possibly cached) and the held-out one,
        cached when the training set is."""
        cfg = self.config
        self.train_set = train
        self.val_set = ImageFolderDataset(self.val_files, cfg.image_size, cfg.mean, cfg.std,
                                          cache=train.cache is not None)

    def predictions(self, model: Any) -> dict[str, float]:
        out = {}
        cfg = self.config
        args = (max(cfg.batch_size, 32), cfg.workers, cfg.progress)
        if self.train_targets is not None:
            probs = predict_dataset(model, self.train_set, *args, desc="eval train")
            out["map_pred_train"] = mean_average_precision(probs, self.train_targets, self.classes).map
        if self.val_targets is not None:
            probs = predict_dataset(model, self.val_set, *args, desc="eval val")
            out["map_pred_val"] = mean_average_precision(probs, self.val_targets, self.classes).map
        return out


def _model_meta(config: TrainConfig, epoch: int) -> dict[str, Any]:
    """What predict / export need to rebuild the classifier and its preprocessing."""
    return {
        "arch": config.arch,
        "classes": list(config.classes),
        "image_size": config.image_size,
        "mean": list(config.mean),
        "std": list(config.std),
        "resize": "bilinear, whole image to image_size x image_size (no crop)",
        "epoch": epoch,
        "config": config.to_dict(),
    }


def _write_refined(state: RunState, paths: list[str], classes: list[str], out: Path, meta: dict) -> None:
    import torch

    from cdul_rt.fileio import atomic_path
    from cdul_rt.labelfile import sidecar, write_label_file

    y_u = torch.sigmoid(state.ytilde).numpy().astype(np.float32)
    # same label selection as the `label` run that made the input, when its sidecar says how
    made_by = {**meta.get("config", {}), **meta} if isinstance(meta.get("config"), dict) else meta
    with atomic_path(out, suffix=".partial" + out.suffix) as partial:  # the suffix names the format
        write_label_file(partial, paths, classes, y_u, meta=meta, threshold=float(made_by.get("threshold") or 0.5),
                         top_k=made_by.get("top_k"))
        meta_file = sidecar(partial, "meta")
    if meta_file.exists():
        meta_file.replace(sidecar(out, "meta"))


def _cpu_state(model: Any) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _checkpoint(state: RunState, run_dir: Path, config: TrainConfig) -> None:
    ckpt.save_checkpoint(run_dir, {
        "model": _cpu_state(state.model),
        "optimizer": state.optimizer.state_dict(),
        "ytilde": state.ytilde.clone(),
        "epoch": state.epoch,
        "rng": ckpt.rng_state(),
        "config": config.to_dict(),
        "history": state.history,
        "meta": _model_meta(config, state.epoch),
    })


def _start(config: TrainConfig, inputs: TrainInputs, scores: np.ndarray, resume: bool,
           log: Log) -> tuple[TrainConfig, RunState]:
    run_dir = inputs.run_dir
    if not resume:
        if (run_dir / ckpt.CHECKPOINT).exists():
            raise CdulError(f"{run_dir} already holds a run; add --resume to continue it or choose another --out")
        return config, new_state(config, scores)
    saved = ckpt.load_checkpoint(run_dir)
    config = resume_config(saved, config)
    state = new_state(config, scores, load_weights=False)
    restore_state(state, saved)
    log(f"resuming {run_dir} after epoch {state.epoch}")
    if state.epoch >= config.epochs:
        log(f"the run already has {state.epoch} epochs (--epochs {config.epochs}); nothing to train")
    return config, state


def _phase(config: TrainConfig, epoch: int) -> str:
    if config.aligns_at(epoch):
        return "align"
    return "warmup" if config.alignment else "fixed-labels"


def run_training(config: TrainConfig, inputs: TrainInputs, table: Any, resume: bool = False,
                 log: Log = print) -> dict[str, Any]:
    """Train (or resume) and write the run folder. ``table`` is the pseudo-label ``LabelTable``."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(inputs.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    files = resolve_image_files(Path(inputs.images), table.paths)
    config, state = _start(config, inputs, table.scores, resume, log)
    evaluator = Evaluator(config, files, table.paths, inputs)
    cache = config.workers == 0 and fits_cache(len(files) + len(evaluator.val_files), config.image_size)
    dataset = ImageFolderDataset(files, config.image_size, config.mean, config.std, cache=cache)
    evaluator.datasets(dataset)
    ckpt.write_json(run_dir / ckpt.CONFIG, {**config.to_dict(), "images": str(inputs.images),
                                            "labels": str(inputs.labels)})
    if not state.history:
        state.history.append({"epoch": 0, **evaluator.pseudo(torch.sigmoid(state.ytilde).numpy())})
    refined = run_dir / (inputs.labels_out or "refined_labels" + Path(inputs.labels).suffix)
    meta = {**(table.meta or {}), "refined_by": "cdul-rt train", "run": str(run_dir)}
    for epoch in range(state.epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, "phase": _phase(config, epoch)}
        row.update(train_epoch(state, dataset, config, epoch))
        row.update(evaluator.pseudo(torch.sigmoid(state.ytilde).numpy()))
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            row.update(evaluator.predictions(state.model))
        row["seconds"] = round(time.perf_counter() - started, 3)
        state.epoch = epoch
        state.history.append(row)
        _write_refined(state, list(table.paths), list(config.classes), refined, {**meta, "epoch": epoch})
        _checkpoint(state, run_dir, config)
        ckpt.write_metrics(run_dir, state.history)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    ckpt.write_metrics(run_dir, state.history)
    plot_curves(state.history, run_dir / "curves.png")
    model_path = ckpt.save_model(run_dir, _cpu_state(state.model), _model_meta(config, state.epoch))
    return {"run_dir": str(run_dir), "model": str(model_path), "refined_labels": str(refined),
            "epochs": state.epoch, "history": state.history}


def train_on_labels(config: TrainConfig, inputs: TrainInputs, resume: bool = False,
                    log: Log = print) -> dict[str, Any]:
    """``cdul-rt train`` as a call (the CLI and the demo's runs): ``config.weights`` is the ``--weights`` request
    (auto, none, synth or a file) and is resolved here, the pseudo labels are read and their classes and sha256 go
    into the config, then :func:`run_training`."""
    from dataclasses import replace

    from cdul_rt.fileio import sha256_file
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.train.model import resolve_weights

    weights, description = resolve_weights(config.arch, config.weights)
    if weights == "none" and not description:
        log(f"warning: no ImageNet weights for {config.arch} (none in the torchvision cache, no --weights FILE); "
            "training from random initialisation, which needs far more data and epochs. Pass --weights FILE "
            "(e.g. resnet101-cd907fc2.pth) or --weights none to silence this.")
    elif not resume:
        log(f"backbone: {description}")
    table = read_label_file(inputs.labels)
    config = replace(config, weights=weights, labels_sha256=sha256_file(inputs.labels), classes=tuple(table.classes))
    return run_training(config, inputs, table, resume=resume, log=log)


def summary_lines(summary: dict[str, Any]) -> str:
    """What ``cdul-rt train`` prints when a run ends: the model, the refined labels, the next command."""
    return (f"model: {summary['model']}\nrefined pseudo labels: {summary['refined_labels']}\n"
            f"next: cdul-rt predict IMAGES --run {summary['run_dir']} --out predictions.jsonl")
