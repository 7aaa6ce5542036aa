"""``cdul_rt.Classifier``: a trained multi-label classifier (``cdul-rt train`` run or exported ONNX) from Python.

The object ``cdul-rt predict`` runs: its folder loop decodes with :class:`ClassifierJob` (in the shared-memory decode
pool's workers, or in-process), normalises with :func:`~cdul_rt.train.data.normalize_pixels` and scores with
:meth:`Classifier.score_images`. An exported folder runs with onnxruntime and never imports torch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cdul_rt.api.inputs import ImageInput, image_list, item_error, reason, to_rgb
from cdul_rt.api.results import Prediction
from cdul_rt.errors import CdulError, torch_missing


def classifier_input(item: ImageInput, info: Any) -> np.ndarray:
    """float32 ``[3, S, S]``: the whole image resized and normalised as the classifier was trained
    (``info``: :class:`~cdul_rt.train.engines.ClassifierInfo`). Raises on unreadable input."""
    from cdul_rt.train.data import normalize_pixels

    return normalize_pixels(classifier_pixels(item, info.image_size), info.mean, info.std)


def classifier_pixels(item: ImageInput, image_size: int) -> np.ndarray:
    """uint8 ``[S, S, 3]``: :func:`classifier_input` before normalisation. Raises on unreadable input."""
    from cdul_rt.train.data import resize_pixels

    return resize_pixels(to_rgb(item), image_size)


@dataclass(frozen=True)
class ClassifierJob:
    """``predict``'s :class:`~cdul_rt.decode.DecodeJob`: :func:`classifier_pixels` of a path, into ``out`` (a decode
    ring slot) when given; an unreadable image is a ``Decoded`` with its reason (as ``label``'s failures file)."""

    image_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    def __call__(self, path: Path, out: np.ndarray | None = None) -> Any:  # a decode.Decoded
        from cdul_rt.decode import Decoded

        try:
            pixels = classifier_pixels(path, self.image_size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is data, not a crash
            return Decoded(path, None, reason(exc))
        if out is None:
            return Decoded(path, pixels)
        out[...] = pixels
        return Decoded(path, out)


def _is_export(path: Path) -> bool:
    from cdul_rt.train.engines import MANIFEST

    return path.suffix == ".onnx" or (path.is_dir() and (path / MANIFEST).is_file())


class Classifier:
    """A classifier held open; ``predict`` gives per-class probabilities and labels, as ``cdul-rt predict``.

    Thread-safe: one batch runs at a time. Example::

        clf = Classifier.open("runs/coco")           # a `cdul-rt train` run folder (torch)
        clf = Classifier.open("clf-onnx")            # an exported folder or classifier.onnx (onnxruntime)
        pred = clf.predict(["a.jpg", pil_image])
        pred.scores, pred.labels, clf.classes
    """

    def __init__(self, runner: Any, threshold: float = 0.5, top_k: int | None = None,
                 batch_size: int = 32) -> None:
        """Use :meth:`open`; this wraps an inactive :class:`~cdul_rt.train.engines.ClassifierRunner`."""
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):  # NaN passes every `<` test
            raise CdulError(f"--threshold must be in [0, 1] (scores are probabilities), got {threshold}")
        if top_k is not None and top_k < 1:
            raise CdulError(f"--top-k must be >= 1, got {top_k}")
        if batch_size < 1:
            raise CdulError(f"--batch-size must be >= 1, got {batch_size}")
        self.threshold, self.top_k, self.batch_size = threshold, top_k, batch_size
        self._lock = threading.Lock()
        self._closed = False
        self.runner = runner.activate()

    @classmethod
    def open(cls, path: str | Path, *, runtime: str | None = None, precision: str | None = None,
             threshold: float = 0.5, top_k: int | None = None, batch_size: int = 32,
             threads: int = 0) -> "Classifier":
        """Open a ``cdul-rt train`` run folder (``runtime="torch"``) or an exported classifier folder /
        ``classifier*.onnx`` (``runtime="onnxruntime"``, no torch). ``runtime`` defaults to what ``path`` is.

        ``precision`` picks an exported folder's graph (fp32 / fp16); ``threads``: CPU threads (0: default).
        """
        path = Path(path)
        if not path.exists():
            raise CdulError(f"{path} does not exist; give a `cdul-rt train` run folder or an exported classifier")
        export = _is_export(path)
        runtime = runtime or ("onnxruntime" if export else "torch")
        if runtime not in ("torch", "onnxruntime"):
            raise CdulError(f"Classifier runtime must be torch or onnxruntime, got {runtime!r}")
        if runtime == "torch" and export:
            raise CdulError(f"{path} is an exported classifier; it runs with runtime='onnxruntime'")
        runner: Any
        if runtime == "onnxruntime":  # load_engine says what to do when path is not an export
            from cdul_rt.train.engines import load_engine

            runner = load_engine(path, precision, threads=threads)
        else:
            from cdul_rt.train.engines import TorchClassifierRunner

            try:
                runner = TorchClassifierRunner(path, threads=threads)
            except ModuleNotFoundError as exc:  # a torch-free install given a run folder
                raise (torch_missing(exc) or exc) from exc
            runner.precision = "fp32"
        try:
            return cls(runner, threshold, top_k, batch_size)
        except ModuleNotFoundError as exc:  # activation imports torch
            raise (torch_missing(exc) or exc) from exc

    @property
    def classes(self) -> list[str]:
        return list(self.runner.info.classes)

    @property
    def info(self) -> Any:
        """:class:`~cdul_rt.train.engines.ClassifierInfo`: classes, architecture, input size and normalisation."""
        return self.runner.info

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """float32 ``[n, 3, S, S]`` (:func:`classifier_input` stacked) -> probabilities float32 ``[n, C]``."""
        with self._lock:
            self._check_open()
            return self.runner.infer({"images": images})["probs"]

    def _check_open(self) -> None:
        if self._closed:
            raise CdulError("this Classifier is closed; open a new one with Classifier.open(...)")

    def predict(self, images: Iterable[ImageInput], *, errors: Literal["raise", "collect"] = "raise") -> Prediction:
        """Probabilities and labels for paths, bytes, PIL images or HxWx3 uint8 arrays (batched inside).

        ``errors``: ``"raise"`` (a :class:`CdulError` naming the bad image) or ``"collect"`` (its reason in
        ``errors``, NaN scores; the others are predicted).
        """
        from cdul_rt.labelfile import select_labels

        self._check_open()
        if errors not in ("raise", "collect"):
            raise CdulError(f"errors must be 'raise' or 'collect', got {errors!r}")
        items = image_list(images)
        scores = np.full((len(items), len(self.classes)), np.nan, np.float32)
        errs: list[str | None] = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            idx, arrays = [], []
            for i, item in enumerate(items[start:start + self.batch_size], start):
                try:
                    arrays.append(classifier_input(item, self.info))
                    idx.append(i)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is the item's error
                    if errors == "raise":
                        raise item_error(i, item, reason(exc)) from exc
                    errs[i] = reason(exc)
            if idx:
                scores[idx] = self.score_images(np.stack(arrays))
        labels = [[] if e else select_labels(scores[i], self.classes, self.threshold, self.top_k)
                  for i, e in enumerate(errs)]
        return Prediction(self.classes, scores, labels, errs)

    def close(self) -> None:
        """Free the runtime session; the classifier cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self.runner.deactivate()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
