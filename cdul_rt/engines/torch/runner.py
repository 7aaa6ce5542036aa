"""Torch runners: the fused labeler (crops + text embeddings -> S_final, ..., image_embeddings) and the bare
visual encoder."""

from __future__ import annotations

import numpy as np

from cdul_rt.aggregation import Aggregation
from cdul_rt.engines.base import EMBEDDING_OUTPUT, LABELER_OUTPUTS, BaseRunner, LabelerRunnerMixin, TensorSpec
from cdul_rt.errors import CdulError
from cdul_rt.labeling import class_scores_torch

PRECISIONS = ("fp32", "bf16", "fp16")


def _dtype(precision: str):
    import torch

    if precision not in PRECISIONS:
        raise CdulError(f"torch runtime precision must be one of {PRECISIONS}, got {precision!r}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class TorchVisualRunner(BaseRunner):
    """crops -> L2-normalised image embeddings (float32), with weights cast to ``precision``.

    bf16 casts the weights (uses AMX matmuls on CPUs that have them); autocast was measured slower on CPU.
    """

    name = "torch-visual"

    def __init__(self, bundle, precision: str = "fp32", device: str = "cpu", compile: bool = False) -> None:
        from cdul_rt.engines.gpu import require_torch_cuda

        super().__init__()
        device = require_torch_cuda(device)  # `gpu` -> cuda:0; a CPU-only torch with cuda: a clear error, not torch's
        self.bundle, self.precision, self.device, self.compile = bundle, precision, device, compile
        self.image_size = bundle.preprocess.size
        self.dtype = _dtype(precision)
        if precision == "fp16" and device == "cpu":
            raise CdulError("fp16 on the CPU is slow and inaccurate in torch; use --precision bf16 or fp32 on CPU")
        self.visual = None
        self._fixed_batch: int | None = None  # crops per call of the compiled graph
        self._feeder = None  # (PreprocessConfig, DeviceFeeder) for uint8 input

    def input_specs(self) -> list[TensorSpec]:
        s = self.image_size
        return [TensorSpec("crops", np.dtype(np.float32), (None, 3, s, s))]

    def _release(self) -> None:
        """Drop the (cast, compiled) encoder and the CLIP model, and the CUDA cache they filled."""
        self.visual = self.bundle = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _activate(self) -> None:
        import copy

        if self.visual is not None:  # cast (and compiled) once; later activations reuse it
            return
        visual = self.bundle.model.visual
        if self.precision != "fp32":  # a cast copy, so the bundle's fp32 model stays the reference
            visual = copy.deepcopy(visual).to(self.dtype)
        visual = visual.to(self.device).eval()
        if self.compile:
            import torch

            visual = torch.compile(visual, dynamic=False)
        self.visual = visual

    def _forward(self, x):
        """Eager: one call. Compiled: fixed-size calls (the last, smaller batch is zero-padded), because a new
        batch size would trigger a recompilation of minutes; crops are independent, so padding changes nothing."""
        if not self.compile:
            return self.visual(x)
        import torch
        import torch._inductor.config as inductor_config

        n = self._fixed_batch = self._fixed_batch or x.shape[0]
        outs = []
        # freezing: weights become constants, so inductor pre-packs them for oneDNN (the CPU inference setting)
        with inductor_config.patch(freezing=True):
            for chunk in x.split(n):
                k = chunk.shape[0]
                if k < n:
                    chunk = torch.cat([chunk, chunk.new_zeros(n - k, *chunk.shape[1:])])
                outs.append(self.visual(chunk)[:k])
        return torch.cat(outs)

    def encode(self, crops):
        """``crops``: float32 numpy ``[B, 3, S, S]``, or a torch tensor (the device decode path's, already there)."""
        import torch

        with torch.inference_mode():
            x = crops if isinstance(crops, torch.Tensor) else torch.from_numpy(crops)
            x = x.to(self.device, self.dtype)
            emb = self._forward(x).float()
            return torch.nn.functional.normalize(emb, dim=-1)

    def encode_uint8(self, crops, preprocess, rows_per_item: int = 1):
        """uint8 ``[N, S, S, 3]`` host crops (an array or a list of arrays) -> embeddings, normalised on the device
        (4x less to copy than float32; pinned, overlapped uploads on CUDA: :mod:`.staging`)."""
        import torch

        from cdul_rt.engines.torch.staging import DeviceFeeder

        if self._feeder is None or self._feeder[0] != preprocess:
            self._feeder = (preprocess, DeviceFeeder(self.device, preprocess))
        with torch.inference_mode():
            embs = [self._forward(x.to(self.dtype)).float() for x in self._feeder[1].chunks(crops, rows_per_item)]
            return torch.nn.functional.normalize(torch.cat(embs), dim=-1)

    def _infer(self, feed):
        return {"image_embeddings": self.encode(feed["crops"]).cpu().numpy()}


class TorchLabelerRunner(LabelerRunnerMixin, TorchVisualRunner):
    """The fused labeler in torch: one encoder call for all crops of k images, then scores and aggregation."""

    name = "torch"

    def __init__(self, bundle, grid: int = 3, aggregation: Aggregation = Aggregation(), precision: str = "fp32",
                 device: str = "cpu", compile: bool = False) -> None:
        super().__init__(bundle, precision=precision, device=device, compile=compile)
        self.crops_per_image = 1 + grid * grid
        self.aggregation = aggregation
        self.embed_dim = int(bundle.config["embed_dim"])
        self.logit_scale = bundle.logit_scale

    def crop_scores(self, crops: np.ndarray, text_embeddings: np.ndarray):
        """Per-crop class scores ``[k, 1+N, C]`` and the global views' embeddings ``[k, D]`` (torch, float32),
        from one encoder call."""
        return self._scores(self.encode(crops), text_embeddings)

    def _scores(self, emb, text_embeddings: np.ndarray):
        import torch

        text = torch.from_numpy(text_embeddings).to(emb.device)
        s = class_scores_torch(emb, text, self.logit_scale)
        return s.reshape(-1, self.crops_per_image, s.shape[-1]), emb[::self.crops_per_image]

    def infer_tensor(self, crops, text_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`infer` for crops that are already a normalised torch tensor ``[k * (1+g^2), 3, S, S]``, e.g. on
        the GPU (:mod:`cdul_rt.devicedecode`): no host copy, no numpy checks beyond the shape."""
        if not self.is_active:
            raise CdulError(f"runner {self.name} is not active; call activate() or use it in a `with` block")
        n, s = crops.shape[0], self.image_size
        if tuple(crops.shape[1:]) != (3, s, s) or n == 0 or n % self.crops_per_image:
            raise CdulError(f"crops must be [k*{self.crops_per_image}, 3, {s}, {s}], got {list(crops.shape)}")
        return self._infer({"crops": crops, "text_embeddings": text_embeddings})

    def _outputs(self, scored) -> dict[str, np.ndarray]:
        """(per-crop scores, global embeddings) -> S_final, S_global, S_ag and image_embeddings as numpy."""
        import torch

        s, global_emb = scored
        with torch.inference_mode():
            outs = self.aggregation.apply_torch(s)
        result = {name: o.float().cpu().numpy() for name, o in zip(LABELER_OUTPUTS, outs)}
        result[EMBEDDING_OUTPUT] = global_emb.float().cpu().numpy()
        return result

    def _infer(self, feed):
        import torch

        with torch.inference_mode():
            return self._outputs(self.crop_scores(feed["crops"], feed["text_embeddings"]))

    def infer_uint8(self, crops, text_embeddings: np.ndarray, preprocess) -> dict[str, np.ndarray]:
        """uint8 crops straight to the device, normalised there (no float32 batch on the host)."""
        import torch

        parts = self.check_uint8(crops)
        self.input_specs()[1].check(text_embeddings)
        with torch.inference_mode():
            emb = self.encode_uint8(parts, preprocess, self.crops_per_image)
            return self._outputs(self._scores(emb, text_embeddings))
