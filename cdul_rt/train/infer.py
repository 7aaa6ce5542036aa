"""Batched classifier inference over image files (used by ``train --gt`` and ``predict``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cdul_rt.train.data import ImageFolderDataset, make_loader

if TYPE_CHECKING:
    import torch


def predict_probs(
    model: "torch.nn.Module",
    files: Sequence[Path],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """sigmoid(model(x)) for every file, in order, eval mode, no grad -> float32 [N, C]."""
    dataset = ImageFolderDataset(files, image_size, mean, std)
    return predict_dataset(model, dataset, batch_size, workers, progress, desc)


def predict_dataset(model: "torch.nn.Module", dataset: ImageFolderDataset, batch_size: int = 32, workers: int = 0,
                    progress: bool = False, desc: str = "predict") -> np.ndarray:
    """``predict_probs`` over a dataset (e.g. a cached one that is evaluated every epoch)."""
    import torch
    from tqdm import tqdm

    loader = make_loader(dataset, range(len(dataset)), batch_size, workers)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            out.append(torch.sigmoid(model(images.to(device)).float()).cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out, axis=0)
