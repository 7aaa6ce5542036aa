"""Build a torch labeler session from a runtime request (loads CLIP, computes or reads cached text embeddings)."""

from __future__ import annotations

from cdul_rt.engines.request import RuntimeRequest, as_request
from cdul_rt.engines.session import LabelerSession


def open_labeler(request: RuntimeRequest, vocab) -> LabelerSession:
    """``--runtime torch`` (``request``: a :class:`RuntimeRequest` with :class:`TorchOptions`, or label options)."""
    from cdul_rt.engines.gpu import require_torch_cuda
    from cdul_rt.engines.torch.runner import TorchLabelerRunner
    from cdul_rt.models import load_clip, model_key
    from cdul_rt.textcache import text_embeddings

    req = as_request(request)
    device = require_torch_cuda(req.device)  # before loading: a CPU-only torch or no GPU is a clear error
    bundle = load_clip(req.model.spec(), device=device)
    text = text_embeddings(bundle, vocab, req.template, model_key(bundle))
    runner = TorchLabelerRunner(bundle, grid=req.grid, aggregation=req.aggregation, precision=req.precision,
                                device=device, compile=req.options.compile)
    return LabelerSession(runner, text, bundle.preprocess, bundle.model_id, bundle.weights_hash,
                          req.precision, "torch", **torch_encoders(bundle, runner))


def torch_encoders(bundle, runner) -> dict:
    """``encode_texts`` (the CLIP text tower, fp32) and ``encode_images`` (the runner's visual encoder, in its
    precision and on its device) of a torch :class:`LabelerSession`."""
    from functools import partial

    from cdul_rt.textcache import encode_text_torch

    return {"encode_texts": partial(encode_text_torch, bundle),
            "encode_images": lambda crops: runner.encode(crops).cpu().numpy()}
