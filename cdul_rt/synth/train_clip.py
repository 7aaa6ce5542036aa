"""Train the shipped tiny CLIP contrastively on single-object views of the synthetic world.

Like real CLIP, the model sees one object per image with a caption naming it, so it learns to recognise objects
that fill a good part of the frame; small objects in a downscaled multi-object scene are out of its training
distribution, which is what CDUL's snippets fix.

Choices (see `TrainConfig` for values):
- Loss: CLIP's symmetric InfoNCE with a learned logit scale (init ln(1/0.07), clamped at ln 100). With 12 classes
  a batch holds many images of the same class, so the text side is the C class captions (one random caption
  template per class and step) and the text->image direction uses soft targets spread over all images of that
  class: the standard loss with duplicate captions counted as positives instead of as negatives.
- Training views look like grid tiles: objects at 40-105% of the view, off-centre, partly cut by the border,
  plus random flips and quarter turns (every class is invariant to them).
- Background-only views (no object) get a uniform target over the classes. CLIP has no background class, but its
  web captions for object-less images name none of our classes, so their scores over our vocabulary are flat;
  without these views a tiny model answers confidently on empty tiles, which real CLIP does less.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdul_rt.synth import TINY_CLIP_CONFIG, TINY_CLIP_NAME, TINY_CLIP_TEMPLATE, TINY_CLIP_WEIGHTS
from cdul_rt.synth.classes import SYNTH_CLASSES
from cdul_rt.synth.scenes import STREAM_SINGLE, STREAM_TRAIN, item_rng, render_single, render_view

CAPTION_TEMPLATES: tuple[str, ...] = (TINY_CLIP_TEMPLATE, "a photo of a {}", "a picture of the {}", "the {}")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 900
    batch_size: int = 64
    pool_size: int = 12000  # pre-rendered views, reused with flips and quarter turns
    view_size: int = 96  # rendered size of a view (about one 3x3 tile of a 288-px scene), then resized to 64
    background_fraction: float = 0.1
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bfloat16 (about 2x faster on CPUs with AMX)
    eval_per_class: int = 50


def create_tiny_clip(weights: str | Path | None = None):
    """The tiny CLIP from the shipped config (random init when `weights` is None), with its eval preprocessing
    and tokenizer, all through open_clip's own factory."""
    import open_clip

    open_clip.add_model_config(TINY_CLIP_CONFIG)
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_CLIP_NAME, pretrained=str(weights) if weights else None)
    return model, preprocess, open_clip.get_tokenizer(TINY_CLIP_NAME)


def build_view_pool(seed: int, n: int, view_size: int, image_size: int,
                    background_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """`n` training views as uint8 [n, 3, S, S] (resized like open_clip's eval transform: bicubic) and their class
    indices (-1 for background-only views)."""
    from PIL import Image

    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = item_rng(seed, i, STREAM_TRAIN)
        cls = None if rng.uniform() < background_fraction else int(rng.integers(len(SYNTH_CLASSES)))
        view = render_view(cls, rng, size=view_size).resize((image_size, image_size), Image.Resampling.BICUBIC)
        images[i] = np.asarray(view).transpose(2, 0, 1)
        labels[i] = -1 if cls is None else cls
    return images, labels


def contrastive_loss(image_features, text_features, labels, scale):
    """Symmetric InfoNCE over images x class captions (see module docstring). labels: class per image, -1 for
    background-only images (uniform image->text target, negatives only for text->image)."""
    import torch
    import torch.nn.functional as F

    logits = scale * image_features @ text_features.t()  # [B, C]
    is_obj = labels >= 0
    target = torch.full_like(logits, 1.0 / logits.shape[1])
    target[is_obj] = F.one_hot(labels[is_obj], logits.shape[1]).to(logits.dtype)
    loss_i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t_logits = logits.t()  # [C, B]
    onehot = F.one_hot(labels.clamp(min=0), logits.shape[1]).t().to(logits.dtype) * is_obj.to(logits.dtype)
    present = onehot.sum(1) > 0
    t_target = onehot[present] / onehot[present].sum(1, keepdim=True)
    loss_t2i = -(t_target * F.log_softmax(t_logits[present], dim=1)).sum(1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def _dihedral(x, rng: np.random.Generator):
    """Random flip and quarter turn per sample (batch split in 8 groups)."""
    import torch

    ops = rng.integers(8, size=x.shape[0])
    out = x.clone()
    for op in range(8):
        idx = torch.from_numpy(np.nonzero(ops == op)[0])
        if len(idx):
            v = torch.rot90(x[idx], op % 4, dims=(2, 3))
            out[idx] = torch.flip(v, dims=(3,)) if op >= 4 else v
    return out


def _normalizer(model):
    import torch

    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return lambda u8: (u8.float() / 255.0 - mean) / std


def _text_features(model, tokenizer, template: str | None, rng: np.random.Generator | None):
    """Normalised caption embeddings of all classes (template None: a random caption template per class)."""
    import torch.nn.functional as F

    caps = [(template or CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]).format(c)
            for c in SYNTH_CLASSES]
    return F.normalize(model.encode_text(tokenizer(caps)), dim=-1)


def zero_shot_accuracy(model, preprocess, tokenizer, seed: int, per_class: int) -> float:
    """Top-1 accuracy with the prompt template on held-out single-object images (stream STREAM_SINGLE)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    correct = total = 0
    with torch.no_grad():
        text = _text_features(model, tokenizer, TINY_CLIP_TEMPLATE, None)
        for c in range(len(SYNTH_CLASSES)):
            imgs = [render_single(c, item_rng(seed, c * 100_000 + i, STREAM_SINGLE)) for i in range(per_class)]
            feats = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in imgs])), dim=-1)
            correct += int(((feats @ text.t()).argmax(1) == c).sum())
            total += per_class
    return correct / total


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def train(cfg: TrainConfig, log=print, checkpoint_every: int = 0, on_checkpoint=None):
    """Train from scratch; returns (model, preprocess, tokenizer, record)."""
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 99])
    model, preprocess, tokenizer = create_tiny_clip()
    t0 = time.time()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    pool, pool_labels = build_view_pool(cfg.seed, cfg.pool_size, cfg.view_size, size, cfg.background_fraction)
    pool, pool_labels = torch.from_numpy(pool), torch.from_numpy(pool_labels)
    t_pool = time.time() - t0
    log(f"rendered {cfg.pool_size} views in {t_pool:.0f}s")
    normalize = _normalizer(model)
    # The 49408 x width token table stays at its (seeded) random init: only our few class-name tokens would
    # move, yet its dense gradient and Adam state would cost as much as the rest of the model per step. The
    # text transformer learns to read the random codes (as LiT locks one tower).
    model.token_embedding.weight.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), foreach=True)
    model.train()
    t1 = time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        idx = torch.from_numpy(rng.integers(cfg.pool_size, size=cfg.batch_size))
        x = normalize(_dihedral(pool[idx], rng))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            img = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
            txt = _text_features(model, tokenizer, None, rng).float()
        loss = contrastive_loss(img, txt, pool_labels[idx], model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"{time.time() - t1:.0f}s")
        if on_checkpoint and checkpoint_every and step and step % checkpoint_every == 0:
            acc = zero_shot_accuracy(model, preprocess, tokenizer, cfg.seed + 1, 10)
            log(f"step {step}: zero-shot top-1 {acc:.3f} (120 images)")
            on_checkpoint(model, {"config": asdict(cfg), "step": step, "zero_shot_top1_120": acc, "partial": True})
            model.train()
    t_train = time.time() - t1
    acc = zero_shot_accuracy(model, preprocess, tokenizer, cfg.seed, cfg.eval_per_class)
    log(f"zero-shot top-1 on {cfg.eval_per_class * len(SYNTH_CLASSES)} held-out single-object images: {acc:.4f}")
    record: dict[str, Any] = {
        "config": asdict(cfg), "classes": list(SYNTH_CLASSES), "template": TINY_CLIP_TEMPLATE,
        "caption_templates": list(CAPTION_TEMPLATES), "zero_shot_top1": acc,
        "eval_images": cfg.eval_per_class * len(SYNTH_CLASSES),
        "logit_scale_exp": float(model.logit_scale.exp().detach()),
        "render_seconds": round(t_pool, 1), "train_seconds": round(t_train, 1), "torch": torch.__version__,
    }
    return model, preprocess, tokenizer, record


def save(model, record: dict[str, Any], weights: Path = TINY_CLIP_WEIGHTS) -> None:
    """fp16 state dict (half the size; open_clip's load_state_dict copies it into the fp32 model) + record."""
    import torch

    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, weights)
    record = {**record, "weights": weights.name, "weights_bytes": weights.stat().st_size}
    weights.with_suffix(".train.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
