"""This machine's roofline: the best measured GEMM FLOP/s per precision, and the model's FLOPs per image.

The ratio ``images/s * FLOPs per image / GEMM FLOP/s`` says how close a runtime gets to what the CPU's matrix
units deliver on a large GEMM of the same precision. A ViT spends > 95 % of its FLOPs in GEMMs, so this ceiling is
the one that matters. Per precision the ceiling is the best of the libraries measured in the run: torch's matmul
(fp32, bf16) and onnxruntime's MatMul (fp32, fp16) and MatMulInteger (int8, the GEMM its dynamic quantisation
runs), so no row can pass 100 % by using a faster GEMM than the one it is divided by. The math functions are pure;
the measurements import torch / onnxruntime lazily.
"""

from __future__ import annotations

import statistics
import time

from cdul_rt.errors import CdulError

MATMUL_PRECISIONS = ("fp32", "bf16")  # torch's CPU matmul; fp16 on CPU is not a fast path there
ORT_PRECISIONS = ("fp32", "fp16", "int8")  # onnxruntime MatMul (fp32, fp16) and MatMulInteger (u8 x s8 -> s32)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN / MLAS packing, thread pool start)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_matmul_flops(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """Median FLOP/s of an ``n x n @ n x n`` torch matmul (2 n^3 FLOPs) at ``precision``, after one warm-up."""
    import torch

    if precision not in MATMUL_PRECISIONS:
        raise CdulError(f"torch matmul roofline is measured for {MATMUL_PRECISIONS}, not {precision!r}")
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    with torch.inference_mode():
        return 2.0 * n**3 / _median_seconds(lambda: a @ b, repeats)


def _ort_gemm_model(precision: str, n: int, rng):
    """A one-node graph: ``Y = A @ B`` with ``B`` a constant (as the encoders' weights are), and its input ``A``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    if precision == "int8":  # what dynamic quantisation runs: uint8 activations x int8 weights, int32 accumulation
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        op, tin, tout = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        dtype, tin = (np.float16, TensorProto.FLOAT16) if precision == "fp16" else (np.float32, TensorProto.FLOAT)
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        op, tout = "MatMul", tin
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", tin, [n, n])],
                              [helper.make_tensor_value_info("Y", tout, [n, n])],
                              initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    return model, a


def measure_ort_gemm(precision: str, n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Median FLOP/s (OP/s for int8) of onnxruntime's CPU GEMM at ``precision`` with the labeler's thread count."""
    import numpy as np

    from cdul_rt.engines.gpu import ort_providers
    from cdul_rt.engines.onnxrt.loader import cpu_threads
    from cdul_rt.errors import require

    if precision not in ORT_PRECISIONS:
        raise CdulError(f"onnxruntime GEMM roofline is measured for {ORT_PRECISIONS}, not {precision!r}")
    ort = require("onnxruntime", "onnx")
    model, a = _ort_gemm_model(precision, n, np.random.default_rng(0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_threads()
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=ort_providers("cpu"))
    return 2.0 * n**3 / _median_seconds(lambda: session.run(None, {"A": a}), repeats)


def best_peaks(samples: dict[tuple[str, str], list[float]]) -> dict[str, tuple[float, str]]:
    """``{(library, precision): [FLOP/s samples]}`` -> ``{precision: (best median, library)}``.

    A row's roofline is the best GEMM any library in the run reached at its precision: a runtime that beats
    torch's GEMM with its own (onnxruntime's MLAS does on AVX-512) cannot then pass 100 %. int8 is compared with
    an int8 GEMM, never with a float one.
    """
    best: dict[str, tuple[float, str]] = {}
    for (library, precision), values in sorted(samples.items()):
        if values:
            flops = float(statistics.median(values))
            if precision not in best or flops > best[precision][0]:
                best[precision] = (flops, library)
    return best


def count_flops(module, example) -> int:
    """FLOPs of one forward pass, counted by torch's ``FlopCounterMode`` (2 per multiply-add).

    Counted with autograd on, on purpose: under ``inference_mode``/``no_grad`` ``nn.MultiheadAttention`` takes its
    fused fast path, whose q/k/v and output projections the counter does not see (ViT-B-32 would read 5.9 instead
    of 8.7 GFLOP per crop, a third too little, and every roofline fraction a half too high).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(example)
    return int(counter.get_total_flops())


def visual_flops_per_crop(visual, image_size: int) -> int:
    """FLOPs of the visual encoder on one ``[1, 3, S, S]`` crop."""
    import torch

    param = next(visual.parameters())
    return count_flops(visual, torch.zeros(1, 3, image_size, image_size, dtype=param.dtype))


def roofline_images_per_s(matmul_flops: float, flops_per_image: float) -> float:
    """The best images/s the matrix units allow."""
    if matmul_flops <= 0 or flops_per_image <= 0:
        raise CdulError("roofline needs positive FLOP/s and FLOPs per image")
    return matmul_flops / flops_per_image


def roofline_fraction(images_per_s: float, matmul_flops: float, flops_per_image: float) -> float:
    """Achieved FLOP/s over measured matmul FLOP/s."""
    return images_per_s / roofline_images_per_s(matmul_flops, flops_per_image)


def speedup(images_per_s: float, baseline_images_per_s: float) -> float:
    if baseline_images_per_s <= 0:
        raise CdulError("the baseline throughput must be positive")
    return images_per_s / baseline_images_per_s
