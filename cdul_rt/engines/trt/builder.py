"""ONNX -> serialized TensorRT engine, written against the TensorRT 10 and 11 Python APIs.

Precision paths (DESIGN.md section 4):
- ``typing="flag"`` (TensorRT 10 only): fp32 ONNX graph, weakly typed network, ``BuilderFlag.FP16`` lets the
  builder pick fp16 kernels where they are faster.
- ``typing="strong"``: the fp16 ONNX graph (weights and activations fp16, LayerNorm / softmax / reductions fp32,
  fp32 inputs and outputs) compiled as a strongly typed network: every tensor keeps the type the graph gives it.
  TensorRT 11 removed ``BuilderFlag.FP16`` and weak typing, so this is the only fp16 path there; on TRT 10 it is
  opt-in through ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (TRT 11 deprecated that flag: always on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdul_rt.engines.trt.profiles import ProfileShapes
from cdul_rt.errors import CdulError

TYPINGS = ("flag", "strong")


def import_tensorrt():
    """``import tensorrt`` or a CdulError that says how to install it (PyPI stubs that fail to load included)."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError from a wheel whose libnvinfer is missing
        from cdul_rt.engines.trt.cuda import INSTALL_HINT

        raise CdulError(f"TensorRT is not available ({type(exc).__name__}: {exc}); {INSTALL_HINT}. "
                        "Without a GPU use --runtime onnxruntime or --runtime torch") from exc
    return tensorrt


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise CdulError(f"cannot read the TensorRT version {version!r}") from exc


def choose_typing(major: int, precision: str, requested: str | None) -> str | None:
    """Which fp16 path to use; None for fp32 builds (no flag, plain network)."""
    if precision == "fp32":
        if requested == "strong":
            return "strong"
        return None
    if precision != "fp16":
        raise CdulError(f"TensorRT engines are built in fp16 or fp32, got precision {precision!r}")
    if major < 10:
        raise CdulError(f"TensorRT {major}.x is too old; cdul-rt needs TensorRT 10 or newer (named-tensor API)")
    if requested is None:
        return "flag" if major == 10 else "strong"
    if requested not in TYPINGS:
        raise CdulError(f"unknown TensorRT typing {requested!r}; use one of {', '.join(TYPINGS)}")
    if requested == "flag" and major >= 11:
        raise CdulError("TensorRT 11 removed BuilderFlag.FP16 (weak typing); build fp16 engines strongly typed "
                        "from the fp16 ONNX graph: `cdul-rt export --precision fp16 --engine tensorrt --trt-typing "
                        "strong` (the default on TensorRT 11)")
    return requested


def resolve_typing(major: int, precision: str, requested: str | None, have: set[str]) -> str | None:
    """:func:`choose_typing`, except that TensorRT 10 compiles an fp16 build strongly typed when only the fp16
    graphs were exported (``have``: precisions of the ONNX graphs at hand), rather than asking for an fp32 export."""
    typing = choose_typing(major, precision, requested)
    if requested is None and typing == "flag" and "fp32" not in have and "fp16" in have:
        return "strong"
    return typing


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    typing: str | None = None  # resolved by choose_typing
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None  # TRT default (3) when None
    verbose: bool = False


def _logger(trt, verbose: bool):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _parser_error(err) -> str:
    """IParserError -> "node N (Op): description" (its desc/node/node_operator accessors, else str())."""
    try:
        return f"node {err.node()} ({err.node_operator()}): {err.desc()}"
    except Exception:  # noqa: BLE001 - older/newer bindings without the accessors
        return str(err)


def _parse(trt, builder, logger, onnx_path: Path, typing: str | None):
    flags = 0
    if typing == "strong" and trt_major(trt.__version__) < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external-data initializers next to the graph (large models)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise CdulError(f"TensorRT could not parse {onnx_path}: {errors or 'unknown parser error'}")
    return network, parser


def _load_timing_cache(config, path: Path | None, log=print) -> None:
    """Attach the timing cache at ``path`` (an empty one when there is none or it does not fit).

    ``ignore_mismatch=False``, as Polygraphy does: with True, ``set_timing_cache`` accepts a cache recorded on
    another device model or TensorRT version, whose timings then steer tactic choice on this one. With False it
    refuses such a cache (returns False); the build then starts from an empty cache, which it writes back."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:  # unreadable (truncated, or from an incompatible TensorRT): start afresh
        log(f"timing cache {path} cannot be read by this TensorRT; starting a new one")
        data, cache = b"", config.create_timing_cache(b"")
    if cache is None:
        raise CdulError("TensorRT could not create a timing cache (create_timing_cache returned None); check the "
                        "TensorRT log above, or that the GPU has free memory")
    if config.set_timing_cache(cache, False):
        return
    if not data:
        raise CdulError("TensorRT refused a new, empty timing cache (set_timing_cache returned False); see the "
                        "TensorRT log above")
    log(f"timing cache {path} was recorded on another GPU or TensorRT version; starting a new one")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise CdulError("TensorRT refused a new, empty timing cache (set_timing_cache returned False)")


def _save_timing_cache(config, path: Path | None) -> None:
    from cdul_rt.fileio import atomic_write

    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    atomic_write(path, bytes(memoryview(cache.serialize())))


def network_layer_types(network) -> list[tuple[str, str]]:
    """(layer type, first output type) names of every layer; in a strongly typed network these are final."""
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.num_outputs:
            out.append((layer.type.name, layer.get_output(0).dtype.name))
    return out


def build_serialized(onnx_path: Path, shapes: ProfileShapes, opts: BuildOptions,
                     log=print) -> tuple[bytes, list | None]:
    """Parse, configure (profile, workspace, precision, timing cache) and build.

    Returns the plan bytes and, for strongly typed builds, the network's layer types (the fp16 evidence)."""
    trt = import_tensorrt()
    logger = _logger(trt, opts.verbose)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, opts.typing)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_bytes))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the fp16 check
    if opts.builder_optimization_level is not None:
        config.builder_optimization_level = int(opts.builder_optimization_level)
    if opts.typing == "flag":
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.precision == "fp32":  # TensorRT enables TF32 by default (10-bit mantissa matmuls): fp32 means fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if {t.name for t in inputs} != set(shapes):
        raise CdulError(f"{onnx_path.name}: the network inputs {sorted(t.name for t in inputs)} do not match the "
                        f"profile {sorted(shapes)}")
    profile = builder.create_optimization_profile()
    for t in inputs:
        if any(d < 0 for d in tuple(t.shape)):  # only dynamic inputs take a (min, opt, max) range
            profile.set_shape(t.name, *shapes[t.name])
    config.add_optimization_profile(profile)
    _load_timing_cache(config, opts.timing_cache, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CdulError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above); "
                        "a larger --trt-workspace or a smaller --trt-max-images often helps")
    _save_timing_cache(config, opts.timing_cache)
    typed = network_layer_types(network) if opts.typing == "strong" else None
    return bytes(memoryview(serialized)), typed


def deserialize(plan: bytes, verbose: bool = False):
    """(runtime, engine); the runtime must outlive the engine, so both are returned. None engine = incompatible."""
    trt = import_tensorrt()
    runtime = trt.Runtime(_logger(trt, verbose))
    return runtime, runtime.deserialize_cuda_engine(plan)


def engine_information(engine, opt_shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The inspector's JSON for the opt shapes. Without a context whose shapes are set, dynamic-shape layers
    report "N/A due to dynamic shapes" instead of their datatypes, hence the context."""
    trt = import_tensorrt()
    context = engine.create_execution_context()
    for name, shape in opt_shapes.items():
        if not context.set_input_shape(name, tuple(shape)):
            raise CdulError(f"TensorRT refused the profile's own opt shape {tuple(shape)} for {name!r}; see the log")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, context
    return info or None
