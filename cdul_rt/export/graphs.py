"""The torch modules that are traced into ``visual.onnx``, ``text.onnx`` and ``labeler.onnx``.

Each wraps an open_clip CLIP and adds only what the graph contract needs (L2 normalisation, int32 tokens, the CDUL
scoring head); the math itself is :mod:`cdul_rt.labeling` and :mod:`cdul_rt.aggregation`, the same functions the
torch runtime runs.
"""

from __future__ import annotations

from cdul_rt.errors import CdulError


def build_visual(model):
    """crops float32 ``[B, 3, S, S]`` -> ``image_embeddings`` float32 ``[B, D]``, L2-normalised."""
    import torch

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, crops):
            return torch.nn.functional.normalize(self.visual(crops), dim=-1)

    return Visual().eval()


def text_tower_supported(model) -> bool:
    """The text graph supports open_clip's built-in CLIP text transformer with end-of-text (argmax) pooling."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    return all(hasattr(model, n) for n in needed) and getattr(model, "text_pool_type", "argmax") == "argmax"


def check_text_tower(model) -> None:
    if not text_tower_supported(model):
        raise CdulError(
            f"the text tower of {type(model).__name__} is not a CLIP text transformer with end-of-text pooling; "
            "text.onnx cannot be exported for it (export with the vocabulary you need: its embeddings are stored)"
        )


def build_text(model):
    """tokens int32 ``[B, L]`` -> ``text_embeddings`` float32 ``[B, D]``, L2-normalised.

    Mirrors open_clip ``CLIP.encode_text``: the causal mask buffer is traced in as a constant (kept, not dropped),
    and the end-of-text position is the argmax over token ids (the EOT id is the largest in the vocabulary). The
    argmax runs on the ids cast to float32 (exact below 2^24) so that runtimes without an int32 ArgMax
    (some TensorRT versions) compile the same graph.
    """
    import torch

    check_text_tower(model)

    class Projection(torch.nn.Module):  # a module, so its MatMul is named /projection/... (fp16 in fp16 graphs)
        def forward(self, x):
            proj = model.text_projection
            return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model
            self.projection = Projection()

        def forward(self, tokens):
            m = self.clip
            x = m.token_embedding(tokens.long()) + m.positional_embedding
            x = m.transformer(x, attn_mask=m.attn_mask)
            x = m.ln_final(x)
            eot = tokens.float().argmax(dim=-1)
            # [:, 0] rather than squeeze(1): the TorchScript exporter turns a squeeze of a dynamic dim into an If
            x = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
            return torch.nn.functional.normalize(self.projection(x), dim=-1)

    return Text().eval()


def build_labeler(model, logit_scale: float, grid: int, mode: str):
    """The fused labeler: crops of k images + class text embeddings -> ``S_final, S_global, S_ag`` ``[k, C]`` and
    ``image_embeddings`` ``[k, D]`` (each image's global view, L2-normalised; same encoder call, no second pass).

    The aggregation's numbers (``zeta``, ``lambda``: :data:`~cdul_rt.aggregation.GRAPH_PARAMS`) are graph inputs
    (float32 ``[1]``, passed after the text embeddings) so one export serves every threshold; the mode and the grid
    change the graph's structure and are baked in (recorded in the manifest). ``logit_scale`` is the raw
    parameter; the graph multiplies by its exp (DESIGN.md 1.1 step 5).
    """
    import torch

    from cdul_rt.aggregation import Aggregation
    from cdul_rt.labeling import class_scores_torch

    crops_per_image = 1 + grid * grid
    aggregation = Aggregation(mode)  # its numbers are replaced by the graph inputs

    class Head(torch.nn.Module):  # a submodule, so its ONNX nodes are named /head/... (kept fp32 in fp16 graphs)
        def forward(self, emb, text, *params):
            s = class_scores_torch(emb, text, logit_scale)
            s = s.reshape(-1, crops_per_image, s.shape[-1])
            # the global view of each image is crop 0 of its 1+g^2; normalised here so it stays fp32 in fp16 graphs
            global_emb = torch.nn.functional.normalize(emb.reshape(-1, crops_per_image, emb.shape[-1])[:, 0], dim=-1)
            return (*aggregation.apply_torch(s, *params), global_emb)

    class Labeler(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual
            self.head = Head()

        def forward(self, crops, text_embeddings, *params):
            return self.head(self.visual(crops), text_embeddings, *params)

    return Labeler().eval()
