"""``cdul-rt export --triton DIR``: a Triton Inference Server model repository from an artifact folder.

Layout (Triton's)::

    DIR/labeler/config.pbtxt      DIR/labeler/1/model.onnx   (or model.plan with --triton-backend tensorrt)
    DIR/visual/...                DIR/text/...                DIR/classifier/...      DIR/cdul_rt.json

Batching. Triton's dynamic batcher concatenates requests along dim 0 of every input and splits every output the
same way, so dim 0 must mean the same thing everywhere. The exported ``labeler.onnx`` does not fit: its crops are
``k*(1+g^2)`` rows, its outputs ``k`` rows, and ``text_embeddings`` has no batch dimension. The repository therefore
gets a *serving variant* of the labeler, made by graph surgery on the exported ONNX (no re-export, no torch):
``crops`` becomes ``[k, 1+g^2, 3, S, S]`` (one row per image, reshaped to the fused ``k*(1+g^2)`` batch inside the
graph) and the vocabulary's text embeddings, zeta and lambda become constants. One request is one or more whole
images, batches are always whole 10-crop groups, and Triton may merge requests of different clients. The visual
encoder batches crops: its preferred batch sizes are multiples of 1+g^2. A new vocabulary = regenerate the
repository (seconds); the encoders are untouched.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cdul_rt.aggregation import Aggregation
from cdul_rt.errors import CdulError
from cdul_rt.export.onnx_io import topological_sort  # noqa: F401 - re-exported (tests, engines)

BACKENDS = ("onnxruntime", "tensorrt")
PLATFORM = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILE = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
NP_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str  # TYPE_FP32 ...
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1 = variable


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_GPU"
    parameters: dict = field(default_factory=dict)


def preferred_sizes(unit: int, opt: int, largest: int) -> tuple[int, ...]:
    """Preferred batch sizes in rows of ``unit`` (1+g^2 crops for the visual encoder, 1 for whole images):
    half the opt batch, the opt batch and the largest, as multiples of ``unit``, capped by ``largest``."""
    if unit < 1 or opt < 1 or largest < unit:
        raise CdulError(f"invalid batch sizing unit={unit} opt={opt} max={largest}")
    items = sorted({max(1, opt // 2), opt, largest // unit})
    return tuple(sorted({min(i * unit, (largest // unit) * unit) for i in items}))


def _tensor_block(kind: str, t: TensorConfig) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    return f"  {{\n    name: \"{t.name}\"\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}"


def config_pbtxt(m: ModelConfig) -> str:
    """The model's ``config.pbtxt`` (protobuf text format of Triton's ModelConfig)."""
    if m.backend not in BACKENDS:
        raise CdulError(f"unknown Triton backend {m.backend!r}; use one of {', '.join(BACKENDS)}")
    lines = [f"name: \"{m.name}\"", f"platform: \"{PLATFORM[m.backend]}\"", f"max_batch_size: {m.max_batch_size}"]
    for key, tensors in (("input", m.inputs), ("output", m.outputs)):
        lines.append(f"{key} [\n" + ",\n".join(_tensor_block(key, t) for t in tensors) + "\n]")
    lines.append(f"instance_group [\n  {{\n    count: {m.instances}\n    kind: {m.kind}\n  }}\n]")
    if m.preferred_batch_sizes:
        if m.max_batch_size < 1:
            raise CdulError(f"model {m.name}: dynamic batching needs max_batch_size >= 1")
        sizes = ", ".join(str(s) for s in m.preferred_batch_sizes)
        lines.append(f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
                     f"  max_queue_delay_microseconds: {m.max_queue_delay_us}\n}}")
    for key, value in sorted(m.parameters.items()):
        lines.append(f"parameters {{\n  key: \"{key}\"\n  value: {{ string_value: \"{value}\" }}\n}}")
    return "\n".join(lines) + "\n"


# -- the serving variant of the labeler ----------------------------------------------------------------------------
def serving_labeler(model, crops_per_image: int, text_embeddings, zeta: float, lam: float):
    """The exported labeler with ``crops`` as ``[images, 1+g^2, 3, S, S]`` and the vocabulary, zeta and lambda
    baked in as constants (see the module docstring). ``model`` is an ONNX ModelProto; returns a new one."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # leave the caller's model alone
    g = model.graph
    by_name = {i.name: i for i in g.input}
    if "crops" not in by_name:
        raise CdulError(f"this graph has no 'crops' input (inputs {sorted(by_name)}): not a cdul-rt labeler")
    crops = by_name["crops"]
    dims = [d.dim_value for d in crops.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d <= 0 for d in dims[1:]):
        raise CdulError(f"labeler crops input must be [n, 3, S, S] with fixed 3, S, S; got {dims}")
    fused = "crops_fused"
    for node in g.node:
        node.input[:] = [fused if x == "crops" else x for x in node.input]
    text = np.ascontiguousarray(text_embeddings, dtype=np.float32)
    consts = {"text_embeddings": text, **Aggregation(zeta=zeta, lam=lam).graph_feeds()}  # the mode is the graph's
    kept = [i for i in g.input if i.name != "crops" and i.name not in consts]
    baked = [i.name for i in g.input if i.name in consts]
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("crops", crops.type.tensor_type.elem_type,
                                                 ["images", crops_per_image, *dims[1:]]))
    g.input.extend(kept)
    g.initializer.extend(numpy_helper.from_array(consts[n], n) for n in baked)
    g.initializer.append(numpy_helper.from_array(np.array([-1, *dims[1:]], np.int64), "crops_fused_shape"))
    g.node.insert(0, helper.make_node("Reshape", ["crops", "crops_fused_shape"], [fused],
                                      name="/serving/fuse_crops"))
    topological_sort(g)
    for out in g.output:  # [k, C] scores, [k, D] image_embeddings: the batch dimension is now the images one
        shape = out.type.tensor_type.shape.dim
        if len(shape) == 2:
            shape[0].Clear()
            shape[0].dim_param = "images"
            if out.name != "image_embeddings":  # its width D was fixed at export
                shape[1].Clear()
                shape[1].dim_value = text.shape[0]
    onnx.checker.check_model(model)
    return model


# -- the repository ------------------------------------------------------------------------------------------------
def _np_name(elem_type: int) -> str:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type).name


def graph_io(model) -> tuple[list[tuple[str, str, tuple]], list[tuple[str, str, tuple]]]:
    """[(name, numpy dtype name, dims with -1 for dynamic)] of the graph's real inputs and its outputs."""
    inits = {i.name for i in model.graph.initializer}

    def one(v):
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in v.type.tensor_type.shape.dim)
        return v.name, _np_name(v.type.tensor_type.elem_type), dims

    return [one(i) for i in model.graph.input if i.name not in inits], [one(o) for o in model.graph.output]


def model_config(name: str, model, backend: str, max_batch: int, preferred: tuple[int, ...],
                 instances: int = 1, kind: str = "KIND_GPU") -> ModelConfig:
    """A batched config from the ONNX graph's I/O: dim 0 becomes Triton's implicit batch dimension."""
    ins, outs = graph_io(model)

    def tensors(items):
        result = []
        for n, dt, dims in items:
            if dt not in NP_TO_TRITON:
                raise CdulError(f"{name}: tensor {n!r} has type {dt}, which this writer does not map to Triton")
            if not dims or any(d < 1 for d in dims[1:]):
                raise CdulError(f"{name}: tensor {n!r} {dims} must be [batch, fixed dims...] to batch in Triton")
            result.append(TensorConfig(n, NP_TO_TRITON[dt], tuple(dims[1:])))
        return tuple(result)

    return ModelConfig(name, backend, max_batch, tensors(ins), tensors(outs), preferred, instances=instances,
                       kind=kind)


@dataclass
class TritonOptions:
    backend: str = "onnxruntime"
    precision: str | None = None  # which exported graphs (fp32, fp16, int8); default: the artifact folder's
    max_images: int = 32
    opt_images: int = 8
    max_classes: int = 1024
    instances: int = 1
    kind: str = "KIND_GPU"  # KIND_CPU serves the onnxruntime backend without a GPU
    zeta: float | None = None  # default: the export's
    lam: float | None = None
    trt: object | None = None  # TrtBuildConfig for --triton-backend tensorrt


def _vocabulary_embeddings(folder: Path, manifest, classes: str | None, template: str | None):
    import numpy as np

    voc = manifest.vocabulary
    if classes is None or classes == voc.name:
        if template not in (None, voc.template):
            classes = voc.name
        else:
            emb = np.load(folder / voc.embeddings)
            return list(voc.classes), emb
    from cdul_rt.artifacts.textstore import load_text_embeddings
    from cdul_rt.vocab import load_vocabulary

    vocab = load_vocabulary(classes)
    template = template or voc.template
    emb = load_text_embeddings(folder, vocab, template, manifest.embed_dim, manifest.weights_hash)
    if emb is None:
        raise CdulError(f"{folder} has no text embeddings for {classes!r} with template {template!r}; add them with "
                        f"`cdul-rt export --classes {classes} --out {folder}`")
    return list(vocab.classes), emb


def _write_version(out: Path, name: str, cfg: ModelConfig, model=None, plan: Path | None = None) -> Path:
    from cdul_rt.export.onnx_io import save_model

    version = out / name / "1"
    if version.exists():
        shutil.rmtree(version)
    version.mkdir(parents=True)
    if plan is not None:
        shutil.copyfile(plan, version / MODEL_FILE["tensorrt"])
    else:
        save_model(model, version / MODEL_FILE["onnxruntime"])
    (out / name / "config.pbtxt").write_text(config_pbtxt(cfg), encoding="utf-8")
    return out / name


def trt_profile(kind: str, onnx_path: Path, grid: int, opts: TritonOptions):
    """(graph kind for the builder, ProfileSpec, profile shapes) of a repository model, in the unit its config
    batches: whole images for the serving labeler and the classifier, single crops for the visual encoder, prompts
    for the text encoder; the maximum is the config's ``max_batch_size``."""
    from cdul_rt.engines.trt.profiles import ProfileSpec, profile_shapes
    from cdul_rt.engines.trt.build import onnx_input_shapes

    spec = ProfileSpec(1, opts.opt_images, opts.max_images, 1, min(80, opts.max_classes), opts.max_classes)
    graph_kind = {"labeler": "labeler_images", "visual": "visual_crops"}.get(kind, kind)
    return graph_kind, spec, profile_shapes(graph_kind, onnx_input_shapes(onnx_path), spec, max(grid, 1))


def check_profile_fits_config(cfg: ModelConfig, shapes: dict) -> None:
    """Every batch Triton may form for ``cfg`` must find the engine's profile: one request of one row up to
    ``max_batch_size`` rows, the preferred sizes included, with the config's fixed dims."""
    top = cfg.max_batch_size
    for t in cfg.inputs:
        lo, _, hi = shapes[t.name]
        if tuple(hi[1:]) != tuple(t.dims) or tuple(lo[1:]) != tuple(t.dims):
            raise CdulError(f"{cfg.name}: input {t.name!r} is {list(t.dims)} in config.pbtxt but {hi[1:]} in the "
                            "engine profile")
        sizes = {1, top, *cfg.preferred_batch_sizes}
        outside = sorted(n for n in sizes if not lo[0] <= n <= hi[0])
        if outside:
            raise CdulError(f"{cfg.name}: Triton may send batches of {outside} rows of {t.name!r}, outside the "
                            f"engine profile ({lo[0]} to {hi[0]}); the profile and max_batch_size must agree")


def _trt_plan(kind: str, model, out: Path, grid: int, cfg: ModelConfig, opts: TritonOptions, log) -> Path:
    """Compile one repository model with the TensorRT builder (profile = what the config lets Triton send)."""
    from cdul_rt.export.onnx_io import save_model
    from cdul_rt.engines.trt.build import GraphSource, TrtBuildConfig, build_engine

    build_dir = out / ".build"
    build_dir.mkdir(parents=True, exist_ok=True)
    src_path = build_dir / f"{kind}.onnx"
    save_model(model, src_path)
    graph_kind, spec, shapes = trt_profile(kind, src_path, grid, opts)
    check_profile_fits_config(cfg, shapes)
    base = opts.trt if opts.trt is not None else TrtBuildConfig()
    timing = base.timing_cache or out.parent / f".{out.name}-timing.cache"  # outlives the build folder
    onnx_precision = "fp16" if any(i.data_type == 10 for i in model.graph.initializer) else "fp32"  # 10: FLOAT16
    typing = base.typing or ("strong" if onnx_precision == "fp16" else None)  # an fp16 graph compiles as typed
    cfg_trt = TrtBuildConfig(**{**base.__dict__, "profile": spec, "timing_cache": timing, "typing": typing})
    return build_engine(GraphSource(graph_kind, src_path, onnx_precision, grid), build_dir, cfg_trt, log).plan


def batching(kind: str, opts: TritonOptions, cpi: int) -> tuple[int, tuple[int, ...]]:
    """(max_batch_size, preferred batch sizes) of a repository model, in its own batch unit: crops for the visual
    encoder (multiples of 1+g^2), images for the serving labeler and the classifier, prompts for the text encoder."""
    if kind == "visual":
        return opts.max_images * cpi, preferred_sizes(cpi, opts.opt_images, opts.max_images * cpi)
    if kind == "text":
        return opts.max_classes, preferred_sizes(1, min(80, opts.max_classes), opts.max_classes)
    return opts.max_images, preferred_sizes(1, opts.opt_images, opts.max_images)


def _repository_sources(folder: Path, opts: TritonOptions, models: tuple[str, ...], classifier_dir: Path | None):
    """(CLIP manifest or None for a classifier-only folder, {kind: GraphSource}); artifacts verified first."""
    from cdul_rt.artifacts.manifest import MANIFEST, verify_artifacts
    from cdul_rt.engines.trt.build import CLASSIFIER_MANIFEST, classifier_source, clip_sources

    manifest = None
    sources = {}
    if (folder / MANIFEST).is_file() or not (folder / CLASSIFIER_MANIFEST).is_file():
        manifest = verify_artifacts(folder)
        precision = opts.precision or manifest.precision
        wanted = tuple(m for m in models if m != "classifier")
        sources = {s.kind: s for s in clip_sources([folder], wanted, precision)}
    if "classifier" in models:
        cls_folder = classifier_dir or folder
        precision = opts.precision or (manifest.precision if manifest else "fp32")
        src = classifier_source(cls_folder, precision if precision != "int8" else "fp32")
        if src is not None:
            sources["classifier"] = src
    if not sources:
        what = opts.precision or (manifest.precision if manifest else "fp32")
        raise CdulError(f"no {what} graphs in {folder}; export them with `cdul-rt export --precision {what}`")
    return manifest, sources


def write_triton_repository(artifact_dir: str | Path, out_dir: str | Path, opts: TritonOptions | None = None,
                            classes: str | None = None, template: str | None = None,
                            models: tuple[str, ...] = ("labeler", "visual", "text", "classifier"),
                            classifier_dir: str | Path | None = None,
                            log: Callable[[str], None] = print) -> list[Path]:
    """Write a Triton model repository for the graphs in ``artifact_dir`` (and a classifier export when found).

    The CLI hook: ``cdul-rt export ... --triton DIR`` calls this with the folder it just exported.
    """
    import onnx

    opts = opts or TritonOptions()
    if opts.backend not in BACKENDS:
        raise CdulError(f"unknown Triton backend {opts.backend!r}; use one of {', '.join(BACKENDS)}")
    folder, out = Path(artifact_dir), Path(out_dir)
    manifest, sources = _repository_sources(folder, opts, models, Path(classifier_dir) if classifier_dir else None)
    cpi = manifest.crops_per_image if manifest else 1 + 3 * 3
    grid = int(manifest.labeler.grid) if manifest else 3
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    class_names: list[str] = []
    try:
        for kind, src in sources.items():
            model = onnx.load(str(src.onnx))
            if kind == "labeler":
                class_names, emb = _vocabulary_embeddings(folder, manifest, classes, template)
                agg = manifest.labeler.aggregation.replace(zeta=opts.zeta, lam=opts.lam)
                model = serving_labeler(model, cpi, emb, **agg.numbers())
            max_batch, preferred = batching(kind, opts, cpi)
            cfg = model_config(kind, model, opts.backend, max_batch, preferred, opts.instances, opts.kind)
            plan = _trt_plan(kind, model, out, grid, cfg, opts, log) if opts.backend == "tensorrt" else None
            written.append(_write_version(out, kind, cfg, model=model, plan=plan))
            log(f"triton: {kind} -> {out / kind} ({opts.backend}, max_batch_size {max_batch}, preferred {preferred})")
    finally:
        shutil.rmtree(out / ".build", ignore_errors=True)
    info = {"model": manifest.model.display if manifest else None,
            "preprocess": manifest.preprocess if manifest else None, "grid": grid, "crops_per_image": cpi,
            "classes": class_names, "backend": opts.backend,
            "models": {k: {"onnx": s.onnx.name, "precision": s.onnx_precision} for k, s in sorted(sources.items())}}
    (out / "cdul_rt.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    log(f"next: tritonserver --model-repository {out.resolve()}")
    return written
