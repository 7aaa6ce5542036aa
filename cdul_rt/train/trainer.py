"""The gradient-alignment training loop (CDUL section 3.2, DESIGN.md 1.2).

Per batch: the network takes one Adam step on the KL loss with the pseudo labels ``y_u = sigmoid(ytilde)`` fixed;
then, after warm-up, with the predictions of that step fixed, the latent logits of the batch's images take one
step of eq. 7 (``ytilde <- ytilde - eta * psi(y_u) * dL/dy_u``). So network and pseudo labels alternate at batch
granularity and every label is updated once per epoch.

Determinism: initialisation uses ``seed``; each epoch draws its order and flips from a generator seeded with
(seed, epoch), so epoch k is the same whether or not the run was interrupted before it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.train import checkpoint as ckpt
from cdul_rt.train.config import RESUMABLE_FIELDS, TrainConfig, config_differences
from cdul_rt.train.data import ImageFolderDataset, make_loader
from cdul_rt.train.losses import bernoulli_kl, categorical_kl, latent_from_labels, latent_update

Log = Callable[[str], None]


@dataclass
class RunState:
    """Everything that changes during a run and is checkpointed."""

    model: Any
    optimizer: Any
    ytilde: Any  # torch.Tensor [N, C]
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_generator(seed: int, epoch: int):
    """The generator of one epoch's shuffle and flips; depends only on (seed, epoch)."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def initial_pseudo_labels(scores: np.ndarray, config: TrainConfig) -> np.ndarray:
    """y_u at epoch 0: S_final, or its thresholded 0/1 version for the hard-label ablation."""
    scores = np.asarray(scores, np.float32)
    return (scores >= config.hard_threshold).astype(np.float32) if config.hard_labels else scores


def new_state(config: TrainConfig, scores: np.ndarray, load_weights: bool = True) -> RunState:
    """Fresh model, optimizer and latent labels; ``load_weights=False`` skips the backbone file (resume)."""
    import torch

    from cdul_rt.train.model import build_classifier

    torch.manual_seed(config.seed)
    model = build_classifier(config.arch, len(config.classes), config.weights if load_weights else "none")
    model = model.to(_device(config.device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ytilde = latent_from_labels(torch.from_numpy(initial_pseudo_labels(scores, config)))
    return RunState(model, optimizer, ytilde)


def _device(name: str):
    """torch.device for --device (``gpu`` accepted); a CPU-only torch or no GPU is a clear error (require_torch_cuda)."""
    import torch

    from cdul_rt.engines.gpu import require_torch_cuda

    return torch.device(require_torch_cuda(name))


def resume_config(saved: dict[str, Any], current: TrainConfig) -> TrainConfig:
    """The saved config with the current execution-only fields; refuse when anything else differs."""
    saved_config = TrainConfig.from_dict(saved["config"])
    diffs = config_differences(saved_config, current)
    if diffs:
        raise CdulError(
            "--resume: this run was started with different settings (" + "; ".join(diffs) + "); "
            "resume with the original options or start a new run in another --out folder"
        )
    # keep the saved weights entry: it records how the run was initialised
    execution = RESUMABLE_FIELDS - {"weights"}
    return dataclasses.replace(saved_config, **{k: getattr(current, k) for k in execution})


def restore_state(state: RunState, saved: dict[str, Any]) -> None:
    """Load a checkpoint dict into ``state``."""
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.ytilde = saved["ytilde"]
    state.epoch = int(saved["epoch"])
    state.history = list(saved["history"])
    ckpt.set_rng_state(saved["rng"])


def train_epoch(state: RunState, dataset: ImageFolderDataset, config: TrainConfig, epoch: int) -> dict[str, float]:
    """One pass: network step per batch, then (after warm-up) the latent update of that batch's labels."""
    import torch
    from tqdm import tqdm

    generator = epoch_generator(config.seed, epoch)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    loader = make_loader(dataset, order, config.batch_size, config.workers)
    loss_fn = bernoulli_kl if config.loss == "bernoulli" else categorical_kl
    aligning = config.aligns_at(epoch)
    device = _device(config.device)
    state.model.train()
    total, count, moved = 0.0, 0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not config.progress, leave=False)
    for images, index in bar:
        if config.hflip:
            flip = torch.rand(images.shape[0], generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        y_u = torch.sigmoid(state.ytilde[index])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            logits = state.model(images.to(device, non_blocking=True))
        logits = logits.float().cpu() if device.type != "cpu" else logits.float()
        loss = loss_fn(y_u, logits)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if aligning:
            new = latent_update(state.ytilde[index], logits.detach(), config.eta, config.sigma, config.c1,
                                use_psi=config.use_psi, loss=config.loss)
            moved += float((torch.sigmoid(new) - y_u).abs().sum())
            state.ytilde[index] = new
        total += float(loss.detach()) * images.shape[0]
        count += images.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
    return {"loss": total / count, "label_change": moved / (count * state.ytilde.shape[1])}


@dataclass(frozen=True)
class TrainInputs:
    images: Path
    labels: Path
    run_dir: Path
    gt: Path | None = None
    val_images: Path | None = None
    val_gt: Path | None = None
    val_labels: Path | None = None  # pseudo labels of the held-out images (for map_pseudo_val)
    labels_out: str = ""  # file name of the refined labels; default: refined_labels + the input's suffix
