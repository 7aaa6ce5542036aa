"""ONNX Runtime runners: the fused labeler, the visual encoder and the text encoder of an artifact folder.

They implement only ``_activate`` / ``_infer`` / ``_deactivate``; input names, shapes and dtypes are checked by
:class:`~cdul_rt.engines.base.BaseRunner` before anything reaches ONNX Runtime.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cdul_rt.aggregation import Aggregation
from cdul_rt.engines.base import EMBEDDING_OUTPUT, LABELER_OUTPUTS, BaseRunner, LabelerRunnerMixin, TensorSpec
from cdul_rt.errors import CdulError


class OnnxRunner(BaseRunner):
    """Runs one ONNX graph; ``session_loader`` is a lazy :class:`SessionFromOnnx`, called on activate."""

    name = "onnxruntime"

    def __init__(self, session_loader: Callable) -> None:
        super().__init__()
        self.session_loader = session_loader
        self.session = None

    def _activate(self) -> None:
        self.session = self.session_loader()
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.graph_outputs = [o.name for o in self.session.get_outputs()]

    def _deactivate(self) -> None:
        self.session = None

    def _run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(outputs, {k: v for k, v in feed.items() if k in self.graph_inputs})
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; the user gets one error with the cause
            raise CdulError(f"onnxruntime failed on {getattr(self.session_loader, 'path', '?')}: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        return dict(zip(outputs, values))


class OnnxLabelerRunner(LabelerRunnerMixin, OnnxRunner):
    """``labeler.onnx``: crops + text embeddings -> S_final, S_global, S_ag, image_embeddings; the aggregation's
    numbers (zeta, lambda) fed as [1] tensors where the graph's mode has them as inputs. Graphs exported before
    ``image_embeddings`` existed still label (scores only); asking for their embeddings raises
    :func:`~cdul_rt.engines.base.image_embeddings`'s re-export message."""

    def __init__(self, session_loader: Callable, crops_per_image: int, image_size: int, embed_dim: int,
                 zeta: float, lam: float) -> None:
        super().__init__(session_loader)
        self.crops_per_image, self.image_size, self.embed_dim = crops_per_image, image_size, embed_dim
        self.zeta, self.lam = zeta, lam
        self.params = Aggregation(zeta=zeta, lam=lam).graph_feeds()  # the mode is the graph's (baked in)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = [*LABELER_OUTPUTS, *([EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in self.graph_outputs else [])]
        return self._run({**feed, **self.params}, outputs)


class OnnxVisualRunner(OnnxRunner):
    """``visual.onnx``: crops -> L2-normalised image embeddings."""

    def __init__(self, session_loader: Callable, image_size: int) -> None:
        super().__init__(session_loader)
        self.image_size = image_size

    def input_specs(self) -> list[TensorSpec]:
        s = self.image_size
        return [TensorSpec("crops", np.dtype(np.float32), (None, 3, s, s))]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(feed, ["image_embeddings"])


class OnnxTextRunner(OnnxRunner):
    """``text.onnx``: int32 token ids -> L2-normalised text embeddings."""

    def __init__(self, session_loader: Callable, context_length: int) -> None:
        super().__init__(session_loader)
        self.context_length = context_length

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("tokens", np.dtype(np.int32), (None, self.context_length))]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(feed, ["text_embeddings"])
