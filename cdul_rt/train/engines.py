"""Classifier runners behind the engines' runner interface: ``images`` float32 [N, 3, S, S] in, ``probs`` out.

``TorchClassifierRunner`` runs a ``train`` run folder; ``OnnxClassifierRunner`` runs an exported
``classifier.onnx`` with onnxruntime and never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdul_rt.engines.base import BaseRunner, TensorSpec
from cdul_rt.engines.gpu import ort_providers
from cdul_rt.errors import CdulError, require

MANIFEST = "classifier.manifest.json"


@dataclass(frozen=True)
class ClassifierInfo:
    """What a caller needs besides the runner: class order and the preprocessing the model was trained with."""

    arch: str
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @classmethod
    def from_meta(cls, meta: dict, source: str) -> "ClassifierInfo":
        return cls(meta["arch"], list(meta["classes"]), int(meta["image_size"]), tuple(meta["mean"]),
                   tuple(meta["std"]), source)


class ClassifierRunner(BaseRunner):
    def __init__(self, info: ClassifierInfo) -> None:
        super().__init__()
        self.info = info

    def input_specs(self) -> list[TensorSpec]:
        s = self.info.image_size
        return [TensorSpec("images", np.dtype(np.float32), (None, 3, s, s))]


class TorchClassifierRunner(ClassifierRunner):
    name = "torch"

    def __init__(self, run_dir: Path, threads: int = 0) -> None:
        from cdul_rt.train.checkpoint import load_model_file

        self.payload = load_model_file(Path(run_dir))
        super().__init__(ClassifierInfo.from_meta(self.payload["meta"], str(run_dir)))
        self.threads = threads
        self.model = None

    def _activate(self) -> None:
        import torch

        from cdul_rt.train.model import build_classifier

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = build_classifier(self.info.arch, len(self.info.classes), "none")
        self.model.load_state_dict(self.payload["state_dict"])
        self.model.eval()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(feed["images"]))
        return {"probs": torch.sigmoid(logits).float().numpy()}

    def _deactivate(self) -> None:
        self.model = None


class OnnxClassifierRunner(ClassifierRunner):
    """onnxruntime on ``classifier.onnx`` (or its fp16 twin); probabilities come out as float32 either way."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, info: ClassifierInfo, providers: list[str] | None = None,
                 threads: int = 0) -> None:
        super().__init__(info)
        self.onnx_path = Path(onnx_path)
        self.providers = providers or ort_providers("cpu")
        self.threads = threads
        self.session = None

    def _activate(self) -> None:
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=self.providers)
        self.input_dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (probs,) = self.session.run(["probs"], {"images": feed["images"].astype(self.input_dtype)})
        return {"probs": probs.astype(np.float32)}

    def _deactivate(self) -> None:
        self.session = None


def load_engine(engine: Path, precision: str | None = None, threads: int = 0) -> OnnxClassifierRunner:
    """An exported classifier folder (with its manifest) or a ``classifier*.onnx`` file beside one. ``precision``
    picks the folder's graph (default fp32 when exported, else the one there is); the runner's ``precision`` says
    which graph it runs."""
    engine = Path(engine)
    folder = engine if engine.is_dir() else engine.parent
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CdulError(f"no {MANIFEST} in {folder}; export one with `cdul-rt export --classifier RUN --out DIR`")
    manifest = json.loads(manifest_path.read_text())
    files = manifest["files"]
    if engine.is_dir():
        precision = precision or ("fp32" if "fp32" in files else next(iter(files)))
        if precision not in files:
            raise CdulError(f"{folder} has no {precision} classifier (has {', '.join(files)}); re-export it")
        engine = folder / files[precision]
    else:
        precision = next((p for p, f in files.items() if f == engine.name), precision or "fp32")
    info = ClassifierInfo.from_meta(manifest["model"], str(engine))
    runner = OnnxClassifierRunner(engine, info, threads=threads)
    runner.precision = precision
    return runner
