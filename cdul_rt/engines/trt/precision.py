"""Did the build really produce an fp16 engine? Pure checks on the engine inspector's JSON and on sizes.

"--fp16 silently built fp32" is a classic (TensorRT 11 dropped ``BuilderFlag.FP16``; a weakly typed TRT 10 build
may keep layers in fp32 when fp16 tactics are slower or unsupported). Signals, in order of authority:

1. Network types (strongly typed builds): every tensor has the type the graph gives it and the builder may not
   change it, so the parsed network's matrix-multiply and convolution output types *are* the compute precision.
2. Layer precisions (weakly typed TRT 10 builds, where the builder chooses): with ``ProfilingVerbosity.DETAILED`` and
   an execution context whose input shapes are set, ``IEngineInspector.get_engine_information(
   LayerInformationFormat.JSON)`` lists every layer with the types of its inputs and outputs. TensorRT 10 writes one
   ``Format/Datatype`` string per tensor ("Row major linear FP16 format", "Half", "Float", ...) and a ``Bindings``
   list of I/O names; TensorRT 11 splits it into ``DataType`` ("Half") and ``Format`` and replaces ``Bindings`` by
   ``I/O Tensors`` objects. Both layouts are read. A layer counts as fp16 when any of its tensors is fp16. Fused Myelin /
   ForeignNode layers are opaque (their I/O can be the fp32 graph I/O while they compute in fp16): when there are
   any, a failing layer count is not trusted and the size decides.
3. Engine size: fp16 weights take half the bytes of the fp32 weights in the ONNX graph, so an fp16 engine is well
   below the fp32 weight size; an fp32 engine is at least as large. Meaningless for tiny models (engine overhead
   dominates), so below ``MIN_SIZE_EVIDENCE`` of weights the verdict is "cannot verify", which fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cdul_rt.errors import CdulError

# Layer types that move or reshape data and carry no arithmetic precision of their own.
_BOOKKEEPING = {"Reformat", "NoOp", "Constant", "Shuffle", "Identity", "Shape", "Slice", "Concatenation", "Gather"}
MIN_FP16_LAYER_FRACTION = 0.5
MAX_FP16_SIZE_RATIO = 0.75  # engine bytes / fp32 weight bytes; fp16 weights alone are 0.5
MIN_SIZE_EVIDENCE = 16 << 20  # fp32 weight bytes below which the engine size says nothing
_OPAQUE = {"Myelin", "kgen"}
COMPUTE_LAYER_TYPES = {"MATRIX_MULTIPLY", "CONVOLUTION", "DECONVOLUTION", "FULLY_CONNECTED", "ATTENTION"}


def tensor_precision(fmt: str) -> str | None:
    """Normalise a ``Format/Datatype`` string to FP16 / BF16 / FP32 / INT8 / FP8, or None (ints, bools, N/A)."""
    s = fmt.lower()
    if "n/a" in s or not s:
        return None
    if "bf16" in s or "bfloat16" in s:
        return "BF16"
    if "fp16" in s or "half" in s or "float16" in s:
        return "FP16"
    if "fp8" in s:
        return "FP8"
    if "int8" in s:
        return "INT8"
    if "fp32" in s or "float" in s:
        return "FP32"
    return None


def tensor_datatype(tensor: dict) -> str | None:
    """The precision of one tensor of a layer in either inspector layout: TensorRT 11's ``DataType`` (its
    ``Format`` names only the layout, or repeats the type), else TensorRT 10's combined ``Format/Datatype``."""
    for field in ("DataType", "Format/Datatype", "Format"):
        kind = tensor_precision(str(tensor.get(field, "")))
        if kind is not None:
            return kind
    return None


def layer_precisions(engine_info: str | dict) -> dict[str, int]:
    """Count compute layers by precision (a layer is FP16 if any input/output is FP16, else its widest float type).

    Returns e.g. ``{"FP16": 120, "FP32": 8, "opaque": 2}``; bookkeeping layers and layers without a known datatype
    are skipped; fused Myelin / ForeignNode layers are counted as ``opaque``.
    """
    data = json.loads(engine_info) if isinstance(engine_info, str) else engine_info
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    counts: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("LayerType") in _BOOKKEEPING:
            continue
        if layer.get("LayerType") in _OPAQUE or "ForeignNode" in str(layer.get("Name", "")):
            counts["opaque"] = counts.get("opaque", 0) + 1
            continue
        tensors = [*layer.get("Inputs", []), *layer.get("Outputs", [])]
        kinds = {tensor_datatype(t) for t in tensors if isinstance(t, dict)}
        kinds.discard(None)
        if not kinds:
            continue
        for kind in ("FP16", "BF16", "FP8", "INT8", "FP32"):  # lowest precision present names the layer
            if kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
                break
    return counts


@dataclass(frozen=True)
class PrecisionCheck:
    ok: bool
    method: str  # "layers" | "size"
    detail: str


def network_precisions(layers: list[tuple[str, str]]) -> dict[str, int]:
    """Count compute layers of a parsed network by output type: ``[("MATRIX_MULTIPLY", "HALF"), ...]`` (the names
    of ``trt.LayerType`` and ``trt.DataType``) -> ``{"FP16": n, "FP32": m}``."""
    names = {"HALF": "FP16", "FLOAT": "FP32", "BF16": "BF16", "INT8": "INT8", "FP8": "FP8"}
    counts: dict[str, int] = {}
    for layer_type, dtype in layers:
        if layer_type in COMPUTE_LAYER_TYPES and dtype in names:
            counts[names[dtype]] = counts.get(names[dtype], 0) + 1
    return counts


def _fraction(counts: dict[str, int], what: str) -> tuple[float, str]:
    total = sum(v for k, v in counts.items() if k != "opaque")
    frac = counts.get("FP16", 0) / total if total else 0.0
    text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" ({frac:.0%} fp16 {what})"
    return frac, text


def check_fp16(engine_info: str | dict | None, engine_bytes: int, fp32_weight_bytes: int,
               network_layers: list[tuple[str, str]] | None = None) -> PrecisionCheck:
    """Decide whether an engine is fp16 (see the module docstring for the order of the signals)."""
    net = network_precisions(network_layers) if network_layers else {}
    if net:
        frac, detail = _fraction(net, "matmul/conv layers in the typed network")
        return PrecisionCheck(frac >= MIN_FP16_LAYER_FRACTION, "network types", detail)
    counts = layer_precisions(engine_info) if engine_info else {}
    if sum(v for k, v in counts.items() if k != "opaque"):
        frac, detail = _fraction(counts, "compute layers")
        if frac >= MIN_FP16_LAYER_FRACTION or not counts.get("opaque"):
            return PrecisionCheck(frac >= MIN_FP16_LAYER_FRACTION, "layers", detail)
    if fp32_weight_bytes < MIN_SIZE_EVIDENCE:
        return PrecisionCheck(False, "size", f"cannot verify: layer information inconclusive ({counts or 'none'}) "
                                             f"and {fp32_weight_bytes / 2**20:.1f} MiB of weights is too little for "
                                             "the size to tell; build strongly typed from the fp16 graph")
    ratio = engine_bytes / fp32_weight_bytes
    detail = (f"engine {engine_bytes / 2**20:.1f} MiB = {ratio:.2f} x the fp32 weights "
              f"({fp32_weight_bytes / 2**20:.1f} MiB)")
    return PrecisionCheck(ratio <= MAX_FP16_SIZE_RATIO, "size", detail)


def require_fp16(check: PrecisionCheck, graph: str) -> None:
    if not check.ok:
        raise CdulError(
            f"the {graph} engine was asked for fp16 but is not fp16 ({check.method}: {check.detail}); the engine was "
            "not saved. On TensorRT 11 build from the fp16 ONNX graph (`cdul-rt export --precision fp16`); on "
            "TensorRT 10 check that the GPU has fast fp16 (compute capability >= 7.0)"
        )


def fp32_weight_bytes(model) -> int:
    """Bytes the initializers of an ONNX ModelProto take in fp32 (float tensors counted at 4 bytes each, so the
    fp32 and the fp16 graph give the same number; other types at their own size). Reads no external data."""
    from onnx import TensorProto, helper

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        itemsize = 4 if init.data_type in floats else helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += n * itemsize
    return total
