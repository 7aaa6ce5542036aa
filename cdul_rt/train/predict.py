"""Predict labels for a folder with a trained classifier (torch run folder or exported ONNX), streaming to a label
file. Re-running resumes (images already in the output are skipped); unreadable images go to
``<out>.failures.jsonl``. Torch-free when the runner is onnxruntime.

``--workers N`` decodes through ``label``'s shared-memory decode pool (:func:`cdul_rt.decode.decode_items` with
:class:`~cdul_rt.api.classifier.ClassifierJob`): images in flight bounded by the ring, a dead worker replaced and its
images retried once (then a "decoder crashed" failures row), workers gone when predict is killed.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from cdul_rt.errors import CdulError

if TYPE_CHECKING:
    from cdul_rt.api.classifier import Classifier


@dataclass
class PredictSummary:
    predicted: int
    skipped: int
    failures: list[tuple[str, str]]
    seconds: float


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def predict_folder(classifier: "Classifier", images: Path, out: Path, threshold: float = 0.5,
                   top_k: int | None = None, batch_size: int = 32, workers: int = 0, overwrite: bool = False,
                   progress: bool = True, meta: dict | None = None) -> PredictSummary:
    """Stream predictions for every image under ``images`` into ``out`` (any label-file format)."""
    from tqdm import tqdm

    from cdul_rt.api.classifier import ClassifierJob
    from cdul_rt.decode import decode_items
    from cdul_rt.imageio import discover_images, relative_name
    from cdul_rt.labelfile import LabelWriter, read_meta, sidecar
    from cdul_rt.train.data import normalize_pixels

    started = time.perf_counter()
    files = discover_images(images)
    if not files:
        raise CdulError(f"no images under {images} (jpg, jpeg, png, webp, bmp, tiff, gif)")
    info = classifier.info
    if overwrite:
        for p in (out, *(sidecar(out, k) for k in ("meta", "failures", "journal"))):
            p.unlink(missing_ok=True)
    previous = read_meta(out).get("classes")
    if previous and list(previous) != info.classes:
        raise CdulError(f"{out} holds predictions for other classes; use --overwrite or another --out")
    writer = LabelWriter(out, info.classes, threshold, top_k)
    done = writer.existing()
    todo = [(f, relative_name(f, Path(images))) for f in files]
    todo = [(f, rel) for f, rel in todo if rel not in done]
    failures: list[tuple[str, str]] = []
    writer.open()
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress)
    decoded = decode_items([f for f, _ in todo], ClassifierJob(info.image_size), workers,
                           prefetch=max(16, 4 * workers, batch_size), hold=batch_size)
    # closing: the pool's workers and ring go when the loop ends, also on an error or Ctrl-C
    with classifier, closing(decoded), open(sidecar(out, "failures"), "a", encoding="utf-8") as failed:
        for chunk in _batches(zip(todo, decoded), batch_size):
            ok = [(rel, item) for (_, rel), item in chunk if item.crops is not None]
            bad = [(rel, item.error or "unknown") for (_, rel), item in chunk if item.crops is None]
            if ok:
                images = np.stack([normalize_pixels(item.crops, info.mean, info.std) for _, item in ok])
                for _, item in ok:  # copied out of the decode ring: its slots take the next images
                    item.release()
                probs = classifier.score_images(images)
                bad += writer.write_batch([rel for rel, _ in ok], probs)  # non-finite rows come back refused
            for rel, reason in bad:
                failures.append((rel, reason))
                failed.write(json.dumps({"path": rel, "reason": reason}) + "\n")
            bar.update(len(chunk))
    bar.close()
    writer.close()
    meta = {**(meta or {}), "tool": "cdul-rt predict", "runtime": classifier.runner.name, "model": info.source,
            "arch": info.arch, "image_size": info.image_size, "threshold": threshold, "top_k": top_k}
    sidecar(out, "meta").write_text(json.dumps({**meta, "classes": info.classes}, indent=2), encoding="utf-8")
    return PredictSummary(len(todo) - len(failures), len(done), failures, time.perf_counter() - started)
