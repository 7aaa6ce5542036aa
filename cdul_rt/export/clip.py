"""``cdul-rt export`` for CLIP: visual, text and fused labeler graphs + tokenizer + text embeddings + manifest.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), chosen explicitly because torch >= 2.9
defaults to the dynamo exporter. Measured here (torch 2.14, open_clip 3.3): both give the same numbers (max abs
diff ~1e-7 on the tiny CLIP), but the dynamo exporter cannot emit opset 17 (it exports opset 18 and its down-
conversion to 17 fails with a traceback), takes ~10x longer on the tiny model, and needs ``dynamic_shapes``
rewritten per graph. Opset 17 is the oldest opset with a fused LayerNormalization (which TensorRT keeps in fp32),
and the widest supported one across TensorRT 8.6-11 and ONNX Runtime; the TorchScript exporter emits it directly.
The extra Shape/Gather nodes it leaves for the dynamic batch are folded by ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from cdul_rt.aggregation import DEFAULT_LAM, DEFAULT_ZETA, GRAPH_PARAMS, Aggregation
from cdul_rt.artifacts.manifest import (MANIFEST, PRECISIONS, ExportRequest, LabelerInfo, Manifest, ModelInfo,
                                        TokenizerInfo, VocabularyInfo)
from cdul_rt.errors import CdulError, require
from cdul_rt.presets import ModelRequest
from cdul_rt.vocab import DEFAULT_TEMPLATE, check_template, load_vocabulary

OPSET = 17
EXPORTER = "torchscript"
TOKENIZER_FILE = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
SCORE_OUTPUTS = ["S_final", "S_global", "S_ag"]
LABELER_OUTPUTS = [*SCORE_OUTPUTS, "image_embeddings"]  # embeddings: per image [k, D], global view


@dataclass
class ExportOptions:
    out: Path
    model: str
    pretrained: str | None = None
    weights: str | None = None
    classes: str = "coco"
    template: str = DEFAULT_TEMPLATE
    grid: int = 3
    mode: str = "cdul"
    zeta: float = DEFAULT_ZETA
    lam: float = DEFAULT_LAM
    precision: str = "fp32"
    opset: int = OPSET

    @property
    def aggregation(self) -> Aggregation:
        """``mode`` (baked into the labeler graph) and the default ``zeta``/``lam`` recorded in the manifest."""
        return Aggregation.from_options(self)

    @property
    def model_request(self) -> ModelRequest:
        return ModelRequest(self.model, self.pretrained, self.weights)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise CdulError(f"--precision for ONNX export must be one of {', '.join(PRECISIONS)}, got "
                            f"{self.precision!r} (bf16 is a torch-runtime option)")
        if self.opset < 17:
            raise CdulError(f"--opset must be >= 17 (LayerNormalization), got {self.opset}")
        if self.grid < 1:
            raise CdulError(f"--grid must be >= 1, got {self.grid}")
        self.aggregation  # noqa: B018 - building the value checks mode, zeta and lam
        check_template(self.template)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("cdul-rt", "torch", "open_clip_torch", "onnx", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _tokenizer_info(bundle) -> TokenizerInfo:
    """``clip-bpe`` when the model uses open_clip's plain CLIP tokenizer (re-implemented torch-free at run time)."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    tok = bundle.tokenizer
    plain = (type(tok) is SimpleTokenizer and tok.clean_fn is _clean_lower and tok.reduction_fn is None
             and len(tok.encoder) == 49408)
    ctx = int(getattr(tok, "context_length", 0) or bundle.model.context_length)
    if not plain:
        return TokenizerInfo("none", ctx)
    return TokenizerInfo("clip-bpe", ctx, TOKENIZER_FILE, int(tok.sot_token_id), int(tok.eot_token_id))


def _skeleton(opts: ExportOptions, bundle, vocab, emb_rel: str) -> Manifest:
    cfg = bundle.config
    agg = opts.aggregation
    return Manifest(
        model=ModelInfo(bundle.spec.arch, bundle.spec.pretrained, bundle.model_id, bundle.weights_hash, cfg,
                        bundle.logit_scale, int(cfg["embed_dim"]), bundle.preprocess.size,
                        ExportRequest(opts.model, opts.pretrained)),
        preprocess=bundle.preprocess.to_dict(),
        tokenizer=_tokenizer_info(bundle),
        vocabulary=VocabularyInfo(vocab.name, list(vocab.classes), list(vocab.prompt_names), opts.template, emb_rel),
        labeler=LabelerInfo(opts.grid, 1 + opts.grid ** 2, agg, ["crops", "text_embeddings", *agg.graph_inputs],
                            list(LABELER_OUTPUTS)),
        precision=opts.precision, opset=opts.opset, exporter=EXPORTER, versions=_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _trace(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict,
           opset: int) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: chosen on purpose (above)
        torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel is not exportable; trace the math
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)


def _fix_output_width(path: Path, output: str, width: int) -> None:
    """Declare the embedding width of an output (the exporter leaves it symbolic after the L2 normalisation), so
    consumers that need fixed non-batch dimensions (Triton, TensorRT profiles) read it from the graph."""
    import onnx

    from cdul_rt.export.onnx_io import save_model

    model = onnx.load(str(path))
    dim = next(o for o in model.graph.output if o.name == output).type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = width
    save_model(model, path)


def export_fp32_graphs(bundle, folder: Path, grid: int, mode: str, opset: int = OPSET) -> dict[str, Path]:
    """Trace the graphs in fp32 into ``folder``; returns {file name: path}.

    ``text.onnx`` is left out for text towers other than open_clip's CLIP transformer (HF text models): such a
    folder labels the vocabularies whose embeddings were stored at export and says so for others.
    """
    import torch

    from cdul_rt.export.graphs import build_labeler, build_text, build_visual, text_tower_supported

    s, d = bundle.preprocess.size, int(bundle.config["embed_dim"])
    n = 2 * (1 + grid * grid)  # example sizes only; every leading dimension is dynamic
    crops = torch.randn(n, 3, s, s)
    text = torch.nn.functional.normalize(torch.randn(5, d), dim=-1)
    paths = {"visual.onnx": folder / "visual.onnx"}
    _trace(build_visual(bundle.model), (crops,), paths["visual.onnx"], ["crops"], ["image_embeddings"],
           {"crops": {0: "crops"}, "image_embeddings": {0: "crops"}}, opset)
    _fix_output_width(paths["visual.onnx"], "image_embeddings", d)
    if text_tower_supported(bundle.model):
        tokens = torch.zeros(3, int(bundle.model.context_length), dtype=torch.int32)
        tokens[:, :5] = torch.tensor([49406, 320, 1125, 539, 49407], dtype=torch.int32)  # "<sot> a photo of <eot>"
        paths["text.onnx"] = folder / "text.onnx"
        _trace(build_text(bundle.model), (tokens,), paths["text.onnx"], ["tokens"], ["text_embeddings"],
               {"tokens": {0: "prompts"}, "text_embeddings": {0: "prompts"}}, opset)
        _fix_output_width(paths["text.onnx"], "text_embeddings", d)
    per_image = {0: "images", 1: "classes"}
    paths["labeler.onnx"] = folder / "labeler.onnx"
    # every aggregation parameter is traced as an input (its value then does not matter); the mode's graph keeps
    # the ones it reads (Aggregation.graph_inputs)
    _trace(build_labeler(bundle.model, bundle.logit_scale, grid, mode),
           (crops, text, *Aggregation(mode).trace_inputs()), paths["labeler.onnx"],
           ["crops", "text_embeddings", *GRAPH_PARAMS], LABELER_OUTPUTS,
           {"crops": {0: "crops"}, "text_embeddings": {0: "classes"}, **{o: per_image for o in SCORE_OUTPUTS},
            "image_embeddings": {0: "images"}}, opset)
    _fix_output_width(paths["labeler.onnx"], "image_embeddings", d)
    return paths


def _convert(fp32: dict[str, Path], out: Path, precision: str,
             props: dict[str, str]) -> dict[str, tuple[str, list[Path]]]:
    """Write the graphs of ``precision`` with their metadata into ``out``; returns {file: (precision, paths)}."""
    from cdul_rt.export.onnx_io import stamp
    from cdul_rt.export.precision import convert_fp16, quantize_int8

    done = {}
    for name, src in fp32.items():
        graph_precision = precision if not (precision == "int8" and name == "text.onnx") else "fp32"
        meta = {**props, "cdul_rt.graph": name, "cdul_rt.graph_precision": graph_precision}
        if graph_precision == "fp16":
            done[name] = (graph_precision, convert_fp16(src, out / name, meta))
        elif graph_precision == "int8":
            done[name] = (graph_precision, quantize_int8(src, out / name, meta))
        else:  # fp32, and the text graph of int8 folders: it runs once per vocabulary, accuracy matters more
            done[name] = (graph_precision, stamp(src, meta, out / name))
    return done


def export_clip(opts: ExportOptions, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                bundle=None) -> Manifest:
    """Export everything into ``opts.out`` and write the manifest last (its absence marks an unfinished export).

    ``bundle``: the already loaded CLIP for these options (``--verify`` loads it once for both steps).
    """
    opts.validate()
    require("onnx", "onnx")
    require("onnxruntime", "onnx")
    from cdul_rt.artifacts.textstore import save_text_embeddings
    from cdul_rt.models import load_clip
    from cdul_rt.textcache import encode_text_torch

    vocab = load_vocabulary(opts.classes)
    bundle = bundle or load_clip(opts.model_request.spec())
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    t0 = time.perf_counter()
    emb = encode_text_torch(bundle, vocab.prompts(opts.template))
    emb_rel = save_text_embeddings(out, vocab, opts.template, emb, bundle.weights_hash)
    manifest = _skeleton(opts, bundle, vocab, emb_rel)
    with tempfile.TemporaryDirectory(dir=out, prefix=".fp32-") as tmp:
        fp32 = export_fp32_graphs(bundle, Path(tmp), opts.grid, opts.mode, opts.opset)
        log(f"traced {', '.join(p.stem for p in fp32.values())} graphs (opset {opts.opset}) in "
            f"{time.perf_counter() - t0:.1f}s")
        written = _convert(fp32, out, opts.precision, manifest.metadata_props())
    for name, (precision, paths) in written.items():
        for path in paths:
            manifest.add_file(out, path.name, name.removesuffix(".onnx") if path.suffix == ".onnx" else "data",
                              precision)
    if "text.onnx" not in written:
        manifest.tokenizer = replace(manifest.tokenizer, kind="none")
        log("text.onnx skipped: this model's text tower is not a CLIP transformer; new vocabularies need a re-export")
    if manifest.tokenizer.kind == "clip-bpe":
        from open_clip.tokenizer import default_bpe

        (out / TOKENIZER_FILE).parent.mkdir(exist_ok=True)
        shutil.copyfile(default_bpe(), out / TOKENIZER_FILE)
        manifest.add_file(out, TOKENIZER_FILE, "tokenizer", "n/a")
    manifest.add_file(out, emb_rel, "text_embeddings", "fp32")
    manifest.write(out)
    log(f"exported {bundle.model_id} ({opts.precision}) to {out} in {time.perf_counter() - t0:.1f}s")
    return manifest

