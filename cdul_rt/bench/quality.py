"""``cdul-rt bench --quality``: label quality by runtime and precision on the synthetic world (issue 18 item 3).

Parity on random weights says little: their class scores are nearly uniform (~1/C), while a trained CLIP multiplies
the cosine by exp(logit_scale) (100 for OpenAI's CLIP, 13.1 for the shipped tiny CLIP) before the softmax, so an
embedding error that is invisible at ~1/C can move a score, and a label, by far more. Here every runtime/precision
encodes the same crops of held-out synthetic scenes with the shipped tiny CLIP; the per-crop embeddings then go
through the labeler's fp32 head (scores, softmax, aggregation), once with the model's own logit scale and once with
it set to 100. Reported per row and scale: the mAP of each aggregation mode against the scenes' ground truth, the
share of images whose top-1 class (S_final, cdul) equals the fp32 reference's, the share whose label set at
``label``'s default threshold (S_final >= 0.5) equals it, and the max / p99 of |S_final - S_final(torch fp32)|.

Why per-crop embeddings and not the labeler graph: the mode is baked into ``labeler.onnx``, so four modes would be
four exports per precision; the encoder is the only part that changes with the precision (every runtime computes
the head in fp32: the torch runner casts the embeddings back, the fp16 graph keeps its tail fp32, int8 quantises
encoder MatMuls only), and ``visual.onnx`` is converted exactly like the labeler's encoder. Text embeddings are
torch fp32 for every row, as ``label`` uses them with an export's own vocabulary.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.aggregation import TABLE3_ORDER, Aggregation  # modes in the paper's order, as the demo prints them

REAL_CLIP_SCALE = 100.0  # exp(logit_scale) of OpenAI's CLIP (clamped there at 100)
ROWS = (("torch", "fp32", "cpu"), ("torch", "bf16", "cpu"), ("onnxruntime", "fp32", "cpu"),
        ("onnxruntime", "fp16", "cpu"), ("onnxruntime", "int8", "cpu"), ("torch", "fp16", "cuda"))
LABEL_THRESHOLD = 0.5  # cdul-rt label --threshold default


@dataclass
class QualityConfig:
    scenes: int = 200
    seed: int = 2026
    size: int = 288
    grid: int = 3
    batch_images: int = 16
    rows: tuple[tuple[str, str, str], ...] = ROWS
    log: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr), repr=False)


def crop_scores(emb: np.ndarray, text: np.ndarray, scale: float, per_image: int) -> np.ndarray:
    """Per-crop class scores ``[k, per_image, C]`` from L2-normalised embeddings ``[k*per_image, D]``:
    softmax(scale * cos), in float64 (the head is not what is being compared)."""
    logits = scale * (emb.astype(np.float64) @ text.astype(np.float64).T)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).reshape(-1, per_image, text.shape[0])


def compare(scores: np.ndarray, reference: np.ndarray, targets: np.ndarray, aggregation: Aggregation = Aggregation(),
            threshold: float = LABEL_THRESHOLD) -> dict:
    """mAP of each mode (with ``aggregation``'s numbers) on ``scores``; top-1 and label-set agreement and S_final
    (``aggregation``'s mode) max / p99 abs diff against ``reference``."""
    from cdul_rt.synth.evaluate import mode_map

    final = aggregation.apply_np(scores)[0]
    ref_final = aggregation.apply_np(reference)[0]
    diff = np.abs(final - ref_final)
    return {"map": {m: mode_map(scores, targets, aggregation.replace(mode=m)) for m in TABLE3_ORDER},
            "top1_agreement": float((final.argmax(1) == ref_final.argmax(1)).mean()),
            "labels_agreement": float(((final >= threshold) == (ref_final >= threshold)).all(1).mean()),
            "s_final_max": float(diff.max()), "s_final_p99": float(np.quantile(diff, 0.99))}


def _encoders(rows, bundle, work: Path, log) -> dict[str, object]:
    """An active visual runner per row key (``runtime/precision/device``), or the reason it cannot run."""
    from cdul_rt.engines.auto import detect

    caps = detect()
    out: dict[str, object] = {}
    for runtime, precision, device in rows:
        key = f"{runtime}/{precision}/{device}"
        if device == "cuda" and not caps.cuda:
            out[key] = "no GPU"
            continue
        if runtime == "onnxruntime" and not caps.onnxruntime:
            out[key] = "onnxruntime not installed"
            continue
        try:
            out[key] = _encoder(runtime, precision, device, bundle, work, log).activate()
        except CdulError as exc:
            out[key] = f"failed: {exc}"
    return out


def _encoder(runtime: str, precision: str, device: str, bundle, work: Path, log):
    if runtime == "torch":
        from cdul_rt.engines.torch.runner import TorchVisualRunner

        return TorchVisualRunner(bundle, precision=precision, device=device)
    from cdul_rt.engines.gpu import ort_providers
    from cdul_rt.engines.onnxrt.loader import SessionFromOnnx
    from cdul_rt.engines.onnxrt.runner import OnnxVisualRunner
    from cdul_rt.export.clip import ExportOptions, export_clip
    from cdul_rt.synth import TINY_CLIP_NAME

    folder = work / precision
    export_clip(ExportOptions(out=folder, model=TINY_CLIP_NAME, classes="synth", precision=precision),
                log=log, bundle=bundle)
    session = SessionFromOnnx(folder / "visual.onnx", ort_providers(device, precision), precision=precision)
    return OnnxVisualRunner(session, bundle.preprocess.size)


def run_quality(cfg: QualityConfig) -> dict:
    """Encode the scenes' crops with every row's encoder (in lockstep, batch by batch) and compare."""
    from cdul_rt.crops import image_crops
    from cdul_rt.preprocess import normalize_batch
    from cdul_rt.synth.evaluate import class_text_embeddings, load_tiny_clip, make_scenes

    t0 = time.perf_counter()
    bundle = load_tiny_clip()
    text = class_text_embeddings(bundle)
    scenes = make_scenes(cfg.scenes, cfg.seed, cfg.size)
    per = 1 + cfg.grid * cfg.grid
    with tempfile.TemporaryDirectory(prefix="cdul-quality-") as tmp:
        encoders = _encoders(cfg.rows, bundle, Path(tmp), cfg.log)
        active = {k: e for k, e in encoders.items() if not isinstance(e, str)}
        if "torch/fp32/cpu" not in active:
            raise CdulError(f"the torch fp32 reference could not run: {encoders.get('torch/fp32/cpu')}")
        emb: dict[str, list[np.ndarray]] = {k: [] for k in active}
        for i in range(0, cfg.scenes, cfg.batch_images):
            crops = normalize_batch(np.concatenate([image_crops(im, cfg.grid, bundle.preprocess)
                                                    for im in scenes.images[i:i + cfg.batch_images]]),
                                    bundle.preprocess)
            for key, runner in active.items():
                emb[key].append(runner.infer({"crops": crops})["image_embeddings"])
            cfg.log(f"quality: encoded {min(i + cfg.batch_images, cfg.scenes)}/{cfg.scenes} scenes")
        for runner in active.values():
            runner.deactivate()
    scales = {"model": float(math.exp(bundle.logit_scale)), "real CLIP (100)": REAL_CLIP_SCALE}
    table: dict[str, dict] = {}
    for scale_name, scale in scales.items():
        ref = crop_scores(np.concatenate(emb["torch/fp32/cpu"]), text, scale, per)
        rows = {}
        for key, e in encoders.items():
            if isinstance(e, str):
                rows[key] = {"status": e}
                continue
            rows[key] = {"status": "ok", **compare(crop_scores(np.concatenate(emb[key]), text, scale, per), ref,
                                                   scenes.targets)}
        table[scale_name] = {"logit_scale_exp": scale, "rows": rows}
    return {"model": bundle.spec.display, "scenes": cfg.scenes, "seed": cfg.seed, "size": cfg.size,
            "grid": cfg.grid, **Aggregation().params_dict(), "scales": table,
            "seconds": round(time.perf_counter() - t0, 1)}


HEADER = ("logit scale", "runtime/precision", *[f"mAP {m}" for m in TABLE3_ORDER], "top-1 agree", "labels agree", "S_final max",
          "S_final p99")


def quality_rows(result: dict) -> list[tuple[str, ...]]:
    out = []
    for scale_name, block in result["scales"].items():
        label = f"{block['logit_scale_exp']:.1f} ({scale_name})" if scale_name == "model" else scale_name
        for key, r in block["rows"].items():
            name = key.removesuffix("/cpu")
            if r["status"] != "ok":
                out.append((label, name, r["status"], *[""] * (len(HEADER) - 3)))
                continue
            out.append((label, name, *[f"{100 * r['map'][m]:.2f}" for m in TABLE3_ORDER],
                        f"{100 * r['top1_agreement']:.1f}%", f"{100 * r['labels_agreement']:.1f}%", f"{r['s_final_max']:.1e}", f"{r['s_final_p99']:.1e}"))
    return out


def format_quality(result: dict, markdown: bool = False) -> str:
    body = [HEADER, *quality_rows(result)]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in body]
        lines.insert(1, "|" + "---|" * len(HEADER))
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body)
