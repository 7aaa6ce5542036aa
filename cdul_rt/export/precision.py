"""fp32 ONNX graphs -> fp16 graphs (for TensorRT strongly typed builds and GPUs) and int8 graphs (CPU).

fp16 uses the converter that ships inside onnxruntime (``onnxruntime.transformers.float16``, the same code as
``onnxconverter_common.float16``), so no extra dependency is needed. What stays fp32, and why:

- LayerNormalization, Softmax and every Reduce*: their sums overflow or lose precision in fp16 (DESIGN.md 4).
- Every node outside the encoder modules (names not under ``/visual/``, ``/transformer/``, ...): the L2 normalisation (a sum of
  squares of D values), the similarity, the softmax over classes and the CDUL aggregation. They cost nothing next
  to the encoder and keep the scores as exact as the embeddings allow.
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
ENCODER_PREFIXES = ("/visual/", "/token_embedding/", "/transformer/", "/ln_final/", "/clip/")


def _tail_nodes(model) -> list[str]:
    """Names of the nodes outside the encoder modules (normalisation, scoring head, aggregation)."""
    return [n.name for n in model.graph.node
            if not n.name.startswith(ENCODER_PREFIXES) and n.op_type not in ("Identity", "Constant")]


def convert_fp16(src: Path, dst: Path) -> None:
    """Write an fp16 copy of ``src``: fp16 weights and activations, the fp32 islands listed above, fp32 I/O."""
    onnx = require("onnx", "onnx")
    float16 = require("onnxruntime.transformers.float16", "onnx")
    from cdul_rt.export.onnx_io import save_model

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP32_OPS,
        node_block_list=_tail_nodes(model))
    count = sum(1 for init in converted.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16)
    if count == 0:
        raise CdulError(f"fp16 conversion of {src.name} left no fp16 weights; this graph cannot be made fp16")
    save_model(converted, dst)


def quantize_int8(src: Path, dst: Path) -> None:
    """Write a dynamically quantised int8 copy of ``src`` (MatMul/Gemm weights int8, per tensor)."""
    quant = require("onnxruntime.quantization", "onnx")
    onnx = require("onnx", "onnx")

    model = onnx.load(str(src))
    matmuls = [n.name for n in model.graph.node
               if n.op_type in ("MatMul", "Gemm") and n.name.startswith(ENCODER_PREFIXES)]
    quant.quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=matmuls,
                           weight_type=quant.QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
