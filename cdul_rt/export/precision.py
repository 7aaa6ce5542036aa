"""fp32 ONNX graphs -> fp16 graphs (for TensorRT strongly typed builds and GPUs) and int8 graphs (CPU).

fp16 uses the converter that ships inside onnxruntime (``onnxruntime.transformers.float16``, the same code as
``onnxconverter_common.float16``), so no extra dependency is needed. What stays fp32, and why:

- LayerNormalization, Softmax and every Reduce*: their sums overflow or lose precision in fp16 (DESIGN.md 4).
- Every node outside the encoder modules (names not under ``/visual/``, ``/transformer/``, ...): the L2
  normalisation (a sum of squares of D values), the similarity, the softmax over classes and the CDUL
  aggregation. They cost nothing next to the encoder and keep the scores as exact as the embeddings allow.
- Graph inputs and outputs (``keep_io_types``): callers feed and read float32 whatever the precision.

int8 is ONNX Runtime dynamic quantisation (int8 weights, activations quantised per batch at run time) of MatMul and
Gemm only, for CPUs with VNNI / AMX int8; the patch-embedding convolution and the scoring head stay fp32.
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.errors import CdulError, require

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceL2",
            "ReduceSumSquare", "ArgMax", "Pow", "Sqrt", "Exp", "Log"]
# ONNX node names carry the torch module path: the image tower, and the text tower's modules (the TorchScript
# exporter names the text wrapper's submodules without the wrapper's own attribute name)
ENCODER_PREFIXES = ("/visual/", "/token_embedding/", "/transformer/", "/ln_final/", "/projection/", "/clip/")


def _tail_nodes(model) -> list[str]:
    """Names of the nodes outside the encoder modules (normalisation, scoring head, aggregation)."""
    return [n.name for n in model.graph.node
            if not n.name.startswith(ENCODER_PREFIXES) and n.op_type not in ("Identity", "Constant")]


def _elem_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def fold_cast_round_trips(model) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs; returns how many consumers were rewired.

    The converter casts the output of every blocked node to fp16 and back to fp32 for the next blocked node, so a
    chain of fp32 nodes still rounds its values to fp16 at every edge (the token ids before the text graph's ArgMax
    among them: 49406 and 49407 both become 49408, and the end-of-text position is lost). Feeding the fp32 value
    straight to the consumers restores what the block list promised.
    """
    import onnx

    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = _elem_types(model)
    producer = {out: n for n in model.graph.node for out in n.output}
    outputs = {o.name for o in model.graph.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename: dict[str, str] = {}
    for node in model.graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == FLOAT and first is not None and cast_to(first) == FLOAT16
                and types.get(first.input[0]) == FLOAT and node.output[0] not in outputs):
            rename[node.output[0]] = first.input[0]
    count = 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
                count += 1
    used = {i for n in model.graph.node for i in n.input} | outputs
    for _ in range(2):  # drop the now unused second casts, then first casts nobody reads any more
        dead = [n for n in model.graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        for n in dead:
            model.graph.node.remove(n)
        used = {i for n in model.graph.node for i in n.input} | outputs
    return count


def convert_fp16(src: Path, dst: Path, props: dict[str, str] | None = None) -> list[Path]:
    """Write an fp16 copy of ``src``: fp16 weights and activations, the fp32 islands listed above, fp32 I/O."""
    onnx = require("onnx", "onnx")
    float16 = require("onnxruntime.transformers.float16", "onnx")
    from cdul_rt.export.onnx_io import save_model, set_metadata, topological_sort

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP32_OPS,
        node_block_list=_tail_nodes(model))
    fold_cast_round_trips(converted)
    topological_sort(converted.graph)  # the converter appends its input casts last: invalid ONNX until sorted
    count = sum(1 for init in converted.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16)
    if count == 0:
        raise CdulError(f"fp16 conversion of {src.name} left no fp16 weights; this graph cannot be made fp16")
    set_metadata(converted, props or {})
    return save_model(converted, dst)


def quantize_int8(src: Path, dst: Path, props: dict[str, str] | None = None) -> list[Path]:
    """Write a dynamically quantised int8 copy of ``src`` (MatMul/Gemm weights int8, per tensor)."""
    quant = require("onnxruntime.quantization", "onnx")
    onnx = require("onnx", "onnx")

    model = onnx.load(str(src))
    matmuls = [n.name for n in model.graph.node
               if n.op_type in ("MatMul", "Gemm") and n.name.startswith(ENCODER_PREFIXES)]
    import logging

    root = logging.getLogger()
    level = root.level
    # ORT logs "consider pre-processing before quantization"; its pre-processing (symbolic shape inference) fails
    # on these graphs (an assertion in _infer_Reshape, measured with onnxruntime 1.32), so the advice is muted.
    root.setLevel(logging.ERROR)
    try:
        quant.quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"],
                               nodes_to_quantize=matmuls, weight_type=quant.QuantType.QInt8,
                               extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    from cdul_rt.export.onnx_io import stamp

    return stamp(dst, props or {})
