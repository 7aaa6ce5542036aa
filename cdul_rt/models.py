"""Load a CLIP from a :class:`~cdul_rt.presets.ModelSpec` with open_clip (torch imported here, lazily).

Weights come from open_clip's hub/URL cache for a tag, a local checkpoint (``--weights``), or a seeded random init
(``--pretrained none``). When the download fails (offline), one :class:`CdulError` says how to provide the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cdul_rt.cache import file_sha256, json_key
from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig
from cdul_rt.presets import RANDOM, ModelSpec

RANDOM_SEED = 0


@dataclass
class ClipBundle:
    """A loaded CLIP with everything the labeler needs to know about it."""

    spec: ModelSpec
    model: Any  # open_clip.CLIP in eval mode
    preprocess: PreprocessConfig
    tokenizer: Callable
    weights_hash: str
    config: dict  # the open_clip model config (embed_dim, vision_cfg, text_cfg)

    @property
    def logit_scale(self) -> float:
        """The raw learned parameter (ln of the multiplier); scores use exp() of it."""
        return float(self.model.logit_scale.detach().float().cpu())

    @property
    def model_id(self) -> str:
        return self.spec.display


def _register_config(path: Path) -> None:
    import open_clip

    open_clip.add_model_config(path)


def _cached_hf_file(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return hit
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download(spec: ModelSpec) -> str:
    """Find cached weights for an open_clip tag or fetch them; the path is hashed for the cache keys.

    Offline, the hub client would retry for about a minute with a screen of warnings; we probe the host first and
    fail at once with one message instead.
    """
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    repo = cfg.get("hf_hub", "").rstrip("/")
    url = f"https://huggingface.co/{repo}" if repo else cfg.get("url", "")
    cached = _cached_hf_file(repo) if repo else None
    if cached:
        return cached
    if not _reachable(url):
        raise CdulError(
            f"cannot fetch weights for {spec.arch}.{spec.pretrained}: {url} is not reachable (offline?). "
            f"Download them on a machine with internet ({url}) and pass --weights FILE, or copy the Hugging Face "
            "cache (~/.cache/huggingface) to this machine; `--pretrained none` runs with random weights."
        )
    try:
        path = download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 - any network/hub failure gets the same advice
        raise CdulError(
            f"cannot fetch weights for {spec.arch}.{spec.pretrained} ({type(exc).__name__}: {str(exc)[:200]}); "
            f"download them from {url} and pass --weights FILE"
        ) from exc
    if not path:
        raise CdulError(f"open_clip has no download source for {spec.arch}.{spec.pretrained}; pass --weights FILE")
    return path


def load_clip(spec: ModelSpec, device: str = "cpu") -> ClipBundle:
    """Build the model, load its weights, and return it in eval mode on ``device``."""
    import open_clip
    import torch

    if spec.config_path is not None:
        _register_config(spec.config_path)
    kwargs: dict = {"device": device}
    if spec.pretrained == RANDOM:
        torch.manual_seed(RANDOM_SEED)  # random weights are reproducible, so caches keyed on them stay valid
        pretrained, weights_hash = None, f"random-seed{RANDOM_SEED}"
    elif spec.weights_path is not None:
        pretrained, weights_hash = str(spec.weights_path), file_sha256(spec.weights_path)
    else:
        path = _download(spec)
        pretrained, weights_hash = path, file_sha256(path)
        tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        # We pass the file path, so open_clip would not merge the tag's preprocessing: do it here.
        pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        if pp:
            kwargs["force_preprocess_cfg"] = pp
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "initialized randomly" on purpose-random weights
    try:
        model = open_clip.create_model(spec.arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - bad checkpoint files surface here
        raise CdulError(f"cannot load {spec.display}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        root.setLevel(level)
    model.eval()
    preprocess = PreprocessConfig.from_dict(open_clip.get_model_preprocess_cfg(model))
    tokenizer = open_clip.get_tokenizer(spec.arch)
    config = open_clip.get_model_config(spec.arch) or {}
    return ClipBundle(spec, model, preprocess, tokenizer, weights_hash, config)


def model_key(bundle: ClipBundle) -> str:
    """Identity of the model's numbers: architecture config + weights (for caches and output metadata)."""
    return json_key({"arch": bundle.spec.arch, "config": bundle.config, "weights": bundle.weights_hash})
