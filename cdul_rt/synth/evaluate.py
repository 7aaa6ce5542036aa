"""Pseudo-label quality on the synthetic world: per-crop CLIP scores of generated scenes, then mAP of every
aggregation mode against the scenes' ground truth (the paper's Table 3 in miniature) and sweeps over zeta, lambda
and the grid size. The scores go through the labeler's own functions (crops, preprocessing, eqs. 1-6), so this
measures what ``cdul-rt label`` produces; aggregations are recomputed in numpy from one set of per-crop scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdul_rt.aggregation import TABLE3_ORDER, Aggregation
from cdul_rt.synth.classes import SYNTH_CLASSES
from cdul_rt.synth.scenes import STREAM_SCENE, item_rng, render_scene

@dataclass
class SceneSet:
    images: list  # PIL images
    targets: np.ndarray  # [n, C] 0/1
    seed: int
    size: int


def make_scenes(n: int, seed: int, size: int = 288, n_objects: tuple[int, int] = (1, 5)) -> SceneSet:
    """Scenes `0..n-1` of `seed` (the same images `write_scene_folder(out, n, seed, size)` writes)."""
    images, targets = [], np.zeros((n, len(SYNTH_CLASSES)), dtype=np.int64)
    for i in range(n):
        img, labels = render_scene(item_rng(seed, i, STREAM_SCENE), size=size, n_objects=n_objects)
        images.append(img)
        targets[i, [SYNTH_CLASSES.index(c) for c in labels]] = 1
    return SceneSet(images, targets, seed, size)


def load_tiny_clip(weights: str | Path | None = None):
    """The shipped tiny CLIP as the labeler loads it (`--model cdul-tiny`), or its config with other weights."""
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model
    from cdul_rt.synth import TINY_CLIP_CONFIG, TINY_CLIP_NAME

    if weights is None:
        return load_clip(resolve_model(TINY_CLIP_NAME))
    return load_clip(resolve_model(str(TINY_CLIP_CONFIG), weights=weights))


def class_text_embeddings(bundle, template: str = "a photo of the {}") -> np.ndarray:
    from cdul_rt.textcache import encode_text_torch

    return encode_text_torch(bundle, [template.format(c) for c in SYNTH_CLASSES])


def crop_scores(bundle, images: list, grid: int, text_emb: np.ndarray, batch_images: int = 16) -> np.ndarray:
    """Per-crop class scores ``[k, 1 + g^2, C]`` (crop 0 the global view): softmax(exp(logit_scale) * cos)."""
    import torch

    from cdul_rt.crops import image_crops
    from cdul_rt.labeling import class_scores_np
    from cdul_rt.preprocess import normalize_batch

    per = 1 + grid * grid
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_images):
            crops = np.concatenate([image_crops(im, grid, bundle.preprocess) for im in images[i:i + batch_images]])
            emb = bundle.model.encode_image(torch.from_numpy(normalize_batch(crops, bundle.preprocess))).float()
            s = class_scores_np(emb.numpy(), text_emb, bundle.logit_scale)
            out.append(s.reshape(-1, per, s.shape[-1]))
    return np.concatenate(out)


def mode_map(scores: np.ndarray, targets: np.ndarray, aggregation: Aggregation) -> float:
    from cdul_rt.metrics import mean_average_precision

    final, _, _ = aggregation.apply_np(scores)
    return mean_average_precision(final, targets, list(SYNTH_CLASSES)).map


def mode_table(scores: np.ndarray, targets: np.ndarray, zeta: float, lam: float) -> dict[str, float]:
    """mAP of each aggregation mode on the same per-crop scores, in the paper's Table 3 order."""
    return {m: mode_map(scores, targets, Aggregation(m, zeta, lam)) for m in TABLE3_ORDER}


def single_object_accuracy(bundle, text_emb: np.ndarray, per_class: int, seed: int) -> float:
    """Zero-shot top-1 (global view only) on single-object images of stream STREAM_SINGLE."""
    from cdul_rt.synth.scenes import STREAM_SINGLE, render_single

    images, truth = [], []
    for c in range(len(SYNTH_CLASSES)):
        for i in range(per_class):
            images.append(render_single(c, item_rng(seed, c * 100_000 + i, STREAM_SINGLE)))
            truth.append(c)
    s = crop_scores(bundle, images, 1, text_emb)[:, 0]
    return float((s.argmax(1) == np.array(truth)).mean())
