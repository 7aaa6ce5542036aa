"""Predict labels for a folder with a trained classifier (torch run folder or exported ONNX), streaming to a label
file. Re-running resumes (images already in the output are skipped); unreadable images go to
``<out>.failures.jsonl``. Torch-free when the runner is onnxruntime.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.train.engines import ClassifierInfo

if TYPE_CHECKING:
    from cdul_rt.api.classifier import Classifier


@dataclass
class PredictSummary:
    predicted: int
    skipped: int
    failures: list[tuple[str, str]]
    seconds: float


def _decode(path: Path, info: ClassifierInfo) -> tuple[np.ndarray | None, str]:
    from cdul_rt.api.classifier import classifier_input
    from cdul_rt.api.inputs import reason

    try:
        return classifier_input(path, info), ""
    except Exception as exc:  # any unreadable file becomes a failures row, never a stopped run
        return None, reason(exc)


def _decoded(files: list[Path], info: ClassifierInfo, workers: int) -> Iterator[tuple[np.ndarray | None, str]]:
    fn = partial(_decode, info=info)
    if workers <= 0:
        yield from map(fn, files)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(fn, files, chunksize=4)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def predict_folder(classifier: "Classifier", images: Path, out: Path, threshold: float = 0.5,
                   top_k: int | None = None, batch_size: int = 32, workers: int = 0, overwrite: bool = False,
                   progress: bool = True, meta: dict | None = None) -> PredictSummary:
    """Stream predictions for every image under ``images`` into ``out`` (any label-file format)."""
    from tqdm import tqdm

    from cdul_rt.imageio import discover_images, relative_name
    from cdul_rt.labelfile import LabelWriter, read_meta, sidecar

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
    with classifier, open(sidecar(out, "failures"), "a", encoding="utf-8") as failed:
        decoded = _decoded([f for f, _ in todo], info, workers)
        for chunk in _batches(zip(todo, decoded), batch_size):
            ok = [(rel, arr) for (_, rel), (arr, _) in chunk if arr is not None]
            bad = [(rel, reason) for (_, rel), (arr, reason) in chunk if arr is None]
            if ok:
                probs = classifier.score_images(np.stack([a for _, a in ok]))
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
