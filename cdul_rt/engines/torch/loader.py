"""Build a torch labeler session from the label options (loads CLIP, computes or reads cached text embeddings)."""

from __future__ import annotations

from cdul_rt.engines.session import LabelerSession


def open_labeler(cfg, vocab) -> LabelerSession:
    from cdul_rt.engines.gpu import require_torch_cuda
    from cdul_rt.engines.torch.runner import TorchLabelerRunner
    from cdul_rt.models import load_clip, model_key
    from cdul_rt.presets import resolve_model
    from cdul_rt.textcache import text_embeddings

    device = require_torch_cuda(cfg.device)  # before loading: a CPU-only torch or no GPU is a clear error
    bundle = load_clip(resolve_model(cfg.model, cfg.pretrained, cfg.weights), device=device)
    text = text_embeddings(bundle, vocab, cfg.template, model_key(bundle))
    runner = TorchLabelerRunner(bundle, grid=cfg.grid, aggregation=cfg.aggregation, precision=cfg.precision,
                                device=device, compile=getattr(cfg, "compile", False))
    return LabelerSession(runner, text, bundle.preprocess, bundle.model_id, bundle.weights_hash,
                          cfg.precision, "torch", **torch_encoders(bundle, runner))


def torch_encoders(bundle, runner) -> dict:
    """``encode_texts`` (the CLIP text tower, fp32) and ``encode_images`` (the runner's visual encoder, in its
    precision and on its device) of a torch :class:`LabelerSession`."""
    from functools import partial

    from cdul_rt.textcache import encode_text_torch

    return {"encode_texts": partial(encode_text_torch, bundle),
            "encode_images": lambda crops: runner.encode(crops).cpu().numpy()}
