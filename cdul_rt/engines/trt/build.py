"""TensorRT engines from the ONNX graphs of an artifact folder (``cdul-rt export --engine tensorrt``, and the
pipeline's prepare step before ``label --runtime tensorrt``, which only looks engines up).
:mod:`~cdul_rt.engines.trt.builder` holds the TensorRT API calls;
this module decides what to build, from which graph, and whether a stored engine is still good.

For each graph (fused labeler, visual encoder, text encoder, classifier when exported) this picks the ONNX file the
precision path needs (TRT 10 ``flag``: the fp32 graph + ``BuilderFlag.FP16``; ``strong``: the fp16 graph, the only
fp16 path on TRT 11), sizes the optimization profile in images of 1+g^2 crops, builds with a workspace limit and a
timing cache per device, checks that an fp16 engine really is fp16, and stores it in an :class:`EngineCache` named by
GPU model, compute capability and TensorRT version and keyed by everything else it depends on (ONNX sha256,
precision, typing, profile, workspace, optimisation level). An engine whose key no longer matches is rebuilt with a
message saying what changed. fp32 engines are built with TF32 off, so they match torch and onnxruntime fp32.

Everything up to ``build_serialized`` (graph choice, profiles, keys, cache decisions) runs without TensorRT and is
tested on CPU; the build itself needs TensorRT and a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cdul_rt.artifacts.manifest import MANIFEST, FileEntry, check_file, read_manifest
from cdul_rt.engines.trt.profiles import EngineKey, ProfileSpec, profile_shapes, shapes_to_json
from cdul_rt.errors import CdulError

if TYPE_CHECKING:
    from cdul_rt.engines.trt.cache import EngineCache
    from cdul_rt.engines.trt.cuda import DeviceInfo

ENGINE_FOLDER = "tensorrt"
TIMING_CACHE = "timing.cache"
DEFAULT_GRAPHS = ("labeler", "visual", "text", "classifier")
CLASSIFIER_MANIFEST = "classifier.manifest.json"


@dataclass(frozen=True)
class GraphSource:
    """One ONNX graph to compile: its kind, the file for this precision path, and the fp32 twin (for sizes)."""

    kind: str  # visual | labeler | text | classifier
    onnx: Path
    onnx_precision: str  # precision of the ONNX file itself
    grid: int


@dataclass
class TrtBuildConfig:
    precision: str = "fp16"
    typing: str | None = None  # None: flag on TRT 10, strong on TRT 11
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    workspace_gib: float = 4.0
    device: int = 0
    timing_cache: Path | None = None  # default: <engine folder>/timing.<device tag>.cache
    builder_optimization_level: int | None = None
    force: bool = False
    verbose: bool = False

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def builder_options(self, typing: str | None, timing_cache: Path):
        """What the TensorRT builder itself takes (:class:`~cdul_rt.engines.trt.builder.BuildOptions`): these
        settings with the typing resolved for the installed TensorRT and the timing cache chosen for the device."""
        from cdul_rt.engines.trt.builder import BuildOptions

        return BuildOptions(self.precision, typing, self.workspace_bytes, timing_cache,
                            self.builder_optimization_level, self.verbose)


@dataclass(frozen=True)
class BuiltEngine:
    kind: str
    plan: Path
    rebuilt: bool
    reason: str | None
    precision_check: str | None


def onnx_input_shapes(path: Path) -> dict[str, tuple]:
    """Input name -> dims (int, or None for a dynamic/symbolic dimension), without loading external weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return shapes


def _graph_file(folder: Path, files: dict[str, FileEntry], role: str, precision: str) -> tuple[Path, str] | None:
    """The artifact file of ``role`` in ``precision``, from the manifest's ``files`` table."""
    for rel, entry in files.items():
        if rel.endswith(".onnx") and entry.role == role and entry.precision == precision:
            return folder / rel, precision
    return None


def clip_sources(artifact_dirs: list[Path], kinds: tuple[str, ...], onnx_precision: str) -> list[GraphSource]:
    """CLIP graphs of ``onnx_precision`` found in one or more artifact folders (an fp32 and an fp16 export may
    live in separate folders); verified against the manifest (size and sha256) before use."""
    found: dict[str, GraphSource] = {}
    for folder in artifact_dirs:
        if not (folder / MANIFEST).is_file():
            continue
        m = read_manifest(folder)
        for kind in kinds:
            hit = _graph_file(folder, m.files, kind, onnx_precision)
            if hit is None and m.precision == onnx_precision and f"{kind}.onnx" in m.files:
                hit = (folder / f"{kind}.onnx", onnx_precision)
            if hit and kind not in found:
                rel = hit[0].relative_to(folder).as_posix()
                check_file(folder, rel, m.files[rel])
                found[kind] = GraphSource(kind, hit[0], onnx_precision, int(m.labeler.grid))
    return [found[k] for k in kinds if k in found]


def classifier_source(folder: Path, onnx_precision: str) -> GraphSource | None:
    path = folder / CLASSIFIER_MANIFEST
    if not path.is_file():
        return None
    files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
    if onnx_precision not in files:
        return None
    return GraphSource("classifier", folder / files[onnx_precision], onnx_precision, 0)


def onnx_precision_for(typing: str | None, precision: str) -> str:
    """The strongly typed path compiles the graph's own types, so fp16 needs the fp16 graph; the flag path and
    fp32 builds start from the fp32 graph."""
    return "fp16" if (typing == "strong" and precision == "fp16") else "fp32"


def engine_key(src: GraphSource, onnx_sha256: str, trt_version: str, cc: str, precision: str, typing: str | None,
               spec: ProfileSpec, gpu: str = "", workspace_bytes: int = 0,
               builder_optimization_level: int | None = None) -> tuple[EngineKey, dict]:
    shapes = profile_shapes(src.kind, onnx_input_shapes(src.onnx), spec, max(src.grid, 1))
    key = EngineKey(onnx_sha256, trt_version, cc, precision, typing or "none", shapes_to_json(shapes), gpu,
                    int(workspace_bytes), builder_optimization_level)
    return key, shapes


def _verify_fp16(plan: bytes, shapes: dict, src: GraphSource, verbose: bool, typed: list | None) -> str:
    import onnx

    from cdul_rt.engines.trt.builder import deserialize, engine_information
    from cdul_rt.engines.trt.precision import check_fp16, fp32_weight_bytes, require_fp16

    _runtime, engine = deserialize(plan, verbose)
    if engine is None:
        raise CdulError(f"the {src.kind} engine that was just built cannot be deserialized; rebuild with `cdul-rt export --engine tensorrt --verbose` for the TensorRT log")
    info = engine_information(engine, {n: s[1] for n, s in shapes.items()})
    weights = fp32_weight_bytes(onnx.load(str(src.onnx), load_external_data=False))
    check = check_fp16(info, len(plan), weights, typed)
    require_fp16(check, src.kind)
    return f"{check.method}: {check.detail}"


@dataclass(frozen=True)
class EngineLookup:
    """One graph's engine on this GPU and TensorRT: the key it must have, and the stored plan when it matches
    (``plan`` None: ``reason`` says why it cannot be used, or None when there is none)."""

    trt_version: str
    device: DeviceInfo
    typing: str | None
    key: EngineKey
    shapes: dict
    cache: EngineCache
    stem: str
    plan: Path | None
    reason: str | None


def find_engine(src: GraphSource, out_dir: Path, cfg: TrtBuildConfig) -> EngineLookup:
    """The stored engine for ``src`` with these settings on this GPU, if there is a good one; builds nothing."""
    from cdul_rt.cache import file_sha256
    from cdul_rt.engines.trt import cuda
    from cdul_rt.engines.trt.builder import choose_typing, import_tensorrt, trt_major
    from cdul_rt.engines.trt.cache import EngineCache, plan_stem

    trt = import_tensorrt()
    dev = cuda.device_info(cfg.device)
    cuda.set_device(cfg.device)
    typing = choose_typing(trt_major(trt.__version__), cfg.precision, cfg.typing)
    key, shapes = engine_key(src, file_sha256(src.onnx), trt.__version__, dev.compute_capability, cfg.precision,
                             typing, cfg.profile, dev.name, cfg.workspace_bytes, cfg.builder_optimization_level)
    cache, stem = EngineCache(out_dir), plan_stem(src.kind, cfg.precision, key)
    plan_path, reason = cache.lookup(stem, key)
    return EngineLookup(trt.__version__, dev, typing, key, shapes, cache, stem, plan_path, reason)


def build_engine(src: GraphSource, out_dir: Path, cfg: TrtBuildConfig,
                 log: Callable[[str], None] = print, found: EngineLookup | None = None) -> BuiltEngine:
    """Reuse the stored engine for ``src`` or build it (``found``: this graph's :func:`find_engine`, when the caller
    already looked)."""
    from cdul_rt.engines.trt.builder import build_serialized

    f = found or find_engine(src, out_dir, cfg)
    stem, reason, key, dev = f.stem, f.reason, f.key, f.device
    if f.plan is not None and not cfg.force:
        log(f"{stem}: up to date ({f.plan})")
        return BuiltEngine(src.kind, f.plan, False, None, None)
    others = f.cache.others(src.kind, cfg.precision, stem)
    if reason:
        log(f"{stem}: rebuilding ({reason})")
    elif others:
        reason = f"no engine for this GPU and TensorRT yet (the folder has {', '.join(others)})"
        log(f"{stem}: {reason}")
    log(f"{stem}: building from {src.onnx.name} on {dev.name} (sm {dev.compute_capability}), TensorRT "
        f"{f.trt_version}, {f.typing or 'fp32'} typing; this takes minutes")
    timing = cfg.timing_cache or out_dir / f"{TIMING_CACHE[:-len('.cache')]}.{key.device_tag()}.cache"  # per device
    plan, typed = build_serialized(src.onnx, f.shapes, cfg.builder_options(f.typing, timing), log)
    check = _verify_fp16(plan, f.shapes, src, cfg.verbose, typed) if cfg.precision == "fp16" else None
    path = f.cache.store(stem, key, plan, {"onnx": str(src.onnx), "onnx_precision": src.onnx_precision,
                                           "grid": src.grid, "device": dev.name, "precision_check": check})
    log(f"{stem}: wrote {path} ({len(plan) / 2**20:.1f} MiB){f'; fp16 verified by {check}' if check else ''}")
    return BuiltEngine(src.kind, path, True, reason, check)


def labeler_build(request, folder: Path, device: int) -> tuple[GraphSource, TrtBuildConfig]:
    """The labeler graph and build settings of a ``label --runtime tensorrt`` request (a
    :class:`~cdul_rt.engines.request.RuntimeRequest` with :class:`TrtOptions`): its precision, ``--trt-workspace``
    and ``--trt-typing`` (resolved for the installed TensorRT and the graphs in ``folder``) on CUDA ``device``.
    The pipeline builds this engine (:func:`cdul_rt.prepare.prepare_request`); the runtime looks it up."""
    from cdul_rt.engines.trt.builder import import_tensorrt, resolve_typing, trt_major

    trt = import_tensorrt()
    options = request.options
    typing = resolve_typing(trt_major(trt.__version__), request.precision, options.typing,
                            available_precisions([folder]))
    (src,) = plan_sources([folder], ("labeler",), request.precision, typing)
    return src, TrtBuildConfig(precision=request.precision, typing=typing, device=device,
                               workspace_gib=float(options.workspace_gib))


def available_precisions(artifact_dirs: list[Path], classifier_dir: Path | None = None) -> set[str]:
    """Precisions of the ONNX graphs in the artifact folders (and a classifier export), from their manifests."""
    found: set[str] = set()
    for folder in artifact_dirs:
        if (folder / MANIFEST).is_file():
            found |= {e.precision for rel, e in read_manifest(folder).files.items() if rel.endswith(".onnx")}
        if (folder / CLASSIFIER_MANIFEST).is_file() and classifier_dir is None:
            found |= set(json.loads((folder / CLASSIFIER_MANIFEST).read_text(encoding="utf-8")).get("files", {}))
    if classifier_dir is not None and (classifier_dir / CLASSIFIER_MANIFEST).is_file():
        found |= set(json.loads((classifier_dir / CLASSIFIER_MANIFEST).read_text(encoding="utf-8")).get("files", {}))
    return found - {None}


def plan_sources(artifact_dirs: list[Path], kinds: tuple[str, ...], precision: str, typing: str | None,
                 classifier_dir: Path | None = None) -> list[GraphSource]:
    """Which ONNX graphs the build will compile (pure: reads manifests only)."""
    onnx_prec = onnx_precision_for(typing, precision)
    sources = clip_sources(artifact_dirs, tuple(k for k in kinds if k != "classifier"), onnx_prec)
    if "classifier" in kinds:
        for folder in ([classifier_dir] if classifier_dir else artifact_dirs):
            src = classifier_source(Path(folder), onnx_prec)
            if src is not None:
                sources.append(src)
                break
    if not sources:
        hint = ("export the fp16 graphs first: `cdul-rt export --precision fp16`" if onnx_prec == "fp16"
                else "export them first with `cdul-rt export`")
        raise CdulError(f"no {onnx_prec} ONNX graphs ({', '.join(kinds)}) in {', '.join(map(str, artifact_dirs))}; "
                        f"{hint}")
    return sources


def build_engines(artifact_dir: str | Path, out_dir: str | Path | None = None,
                  kinds: tuple[str, ...] = DEFAULT_GRAPHS, cfg: TrtBuildConfig | None = None,
                  extra_dirs: tuple[str | Path, ...] = (), classifier_dir: str | Path | None = None,
                  log: Callable[[str], None] = print) -> list[BuiltEngine]:
    """Build (or reuse) one engine per graph into ``out_dir`` (default ``<artifact_dir>/tensorrt``).

    The CLI hook: ``cdul-rt export ... --engine tensorrt`` calls this with the folder it just exported.
    """
    from cdul_rt.engines.trt.builder import import_tensorrt, resolve_typing, trt_major

    cfg = cfg or TrtBuildConfig()
    trt = import_tensorrt()
    folders = [Path(artifact_dir), *map(Path, extra_dirs)]
    cls_dir = Path(classifier_dir) if classifier_dir else None
    typing = resolve_typing(trt_major(trt.__version__), cfg.precision, cfg.typing,
                            available_precisions(folders, cls_dir))
    sources = plan_sources(folders, kinds, cfg.precision, typing, cls_dir)
    missing = [k for k in kinds if k not in {s.kind for s in sources}]
    if missing:
        log(f"no {onnx_precision_for(typing, cfg.precision)} ONNX graph for {', '.join(missing)}: not built")
    out = Path(out_dir) if out_dir else Path(artifact_dir) / ENGINE_FOLDER
    cfg = TrtBuildConfig(**{**cfg.__dict__, "typing": typing})
    built = [build_engine(src, out, cfg, log) for src in sources]
    log(f"next: cdul-rt label IMAGES --runtime tensorrt --engine-dir {artifact_dir} --device cuda:{cfg.device}")
    return built
