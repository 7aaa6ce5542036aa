"""The text and visual encoders of an artifact folder as plain callables (``Labeler.embed_texts`` /
``embed_images``): opened on first use, kept open, safe to call from several threads (ONNX Runtime's ``run`` is)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.artifacts.manifest import Manifest, verify_artifacts

TEXT_BATCH = 256  # prompts per text.onnx call


class _Lazy:
    """Opens ``self._open()`` once, on the first call, under a lock."""

    def __init__(self) -> None:
        self._runner = None
        self._lock = threading.Lock()

    def runner(self):
        with self._lock:
            if self._runner is None:
                self._runner = self._open().activate()
            return self._runner

    def _open(self):
        raise NotImplementedError  # abstract

    def close(self) -> None:
        with self._lock:
            if self._runner is not None:
                self._runner.deactivate()
                self._runner = None


class OnnxTextEncoder(_Lazy):
    """prompts -> float32 ``[n, D]``: the torch-free CLIP tokenizer + ``text.onnx``."""

    def __init__(self, folder: Path, manifest: Manifest, providers: list) -> None:
        super().__init__()
        self.folder, self.manifest, self.providers = Path(folder), manifest, providers
        if manifest.tokenizer.kind != "clip-bpe":
            raise CdulError(f"{folder} cannot tokenise text without torch (its model's tokenizer is not CLIP BPE); "
                            "export with the vocabulary you need (`cdul-rt export --classes ... --out DIR`) or use "
                            "the torch runtime")

    def _open(self):
        from cdul_rt.engines.onnxrt.loader import SessionFromOnnx
        from cdul_rt.engines.onnxrt.runner import OnnxTextRunner
        from cdul_rt.engines.onnxrt.tokenizer import ClipTokenizer

        tok, m = self.manifest.tokenizer, self.manifest
        verify_artifacts(self.folder, (tok.vocab_file, "text.onnx"))
        self.tokenizer = ClipTokenizer(self.folder / tok.vocab_file, int(tok.context_length))
        session = SessionFromOnnx(self.folder / "text.onnx", self.providers, precision=m.graph_precision("text.onnx"))
        return OnnxTextRunner(session, int(tok.context_length))

    def __call__(self, prompts: list[str]) -> np.ndarray:
        runner = self.runner()
        out = [runner.infer({"tokens": self.tokenizer(prompts[i:i + TEXT_BATCH])})["text_embeddings"]
               for i in range(0, len(prompts), TEXT_BATCH)]
        d = self.manifest.embed_dim
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, d), np.float32)


class OnnxVisualEncoder(_Lazy):
    """normalised crops float32 ``[n, 3, S, S]`` -> float32 ``[n, D]``: ``visual.onnx``."""

    def __init__(self, folder: Path, manifest: Manifest, providers: list) -> None:
        super().__init__()
        self.folder, self.manifest, self.providers = Path(folder), manifest, providers

    def _open(self):
        from cdul_rt.engines.onnxrt.loader import SessionFromOnnx
        from cdul_rt.engines.onnxrt.runner import OnnxVisualRunner

        m = self.manifest
        verify_artifacts(self.folder, ("visual.onnx",))
        session = SessionFromOnnx(self.folder / "visual.onnx", self.providers,
                                  precision=m.graph_precision("visual.onnx"))
        return OnnxVisualRunner(session, m.image_size)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.runner().infer({"crops": crops})["image_embeddings"]
