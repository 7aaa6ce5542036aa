"""The peer baseline: the loop a researcher writes with open_clip (per image, per crop, batch of 1, fp32).

It is timed per image, including decoding, open_clip's own preprocessing (torchvision transforms) and writing a
JSONL row, so its images/s compares with the end-to-end rows of ``cdul-rt label``. The crops are the same global
view + grid tiles, so its scores must agree with the fp32 reference (a parity check on the harness itself).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cdul_rt.aggregation import Aggregation
from cdul_rt.crops import grid_boxes


def open_clip_preprocess(model):
    """open_clip's eval transform for ``model`` (what ``create_model_and_transforms`` returns)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False)


def naive_label(model, preprocess, path: Path, text, grid: int, aggregation: Aggregation) -> np.ndarray:
    """S_final ``[C]`` for one image, one crop at a time: ``[S_final, S_global, S_ag]`` stacked ``[3, C]``."""
    import torch
    from PIL import Image

    img = Image.open(path).convert("RGB")
    views = [img] + [img.crop(box) for box in grid_boxes(img.width, img.height, grid)]
    scores = []
    with torch.no_grad():
        for view in views:
            emb = model.encode_image(preprocess(view).unsqueeze(0))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            scores.append((model.logit_scale.exp() * emb @ text.T).softmax(dim=-1)[0].numpy())
    final, s_global, s_ag = aggregation.apply_np(np.stack(scores)[None])
    return np.stack([final[0], s_global[0], s_ag[0]])


def run_naive(bundle, paths: list[Path], text_embeddings: np.ndarray, out: Path, grid: int = 3,
              aggregation: Aggregation = Aggregation(), warmup: int = 1,
              classes: list[str] | None = None) -> tuple[list[float], np.ndarray]:
    """Seconds per image (after ``warmup`` untimed images) and S_final ``[n, C]`` of the timed images."""
    import torch

    model, text = bundle.model, torch.from_numpy(text_embeddings)
    preprocess = open_clip_preprocess(model)
    for p in paths[:warmup]:
        naive_label(model, preprocess, p, text, grid, aggregation)
    seconds, finals = [], []
    names = classes or [str(i) for i in range(text.shape[0])]
    with open(out, "w", encoding="utf-8") as f:
        for p in paths[warmup:]:
            t = time.perf_counter()
            s = naive_label(model, preprocess, p, text, grid, aggregation)
            f.write(json.dumps({"path": p.name, "scores": dict(zip(names, s[0].tolist()))}) + "\n")
            seconds.append(time.perf_counter() - t)
            finals.append(s[0])
    return seconds, np.stack(finals)
