"""This machine's roofline: measured matmul FLOP/s per precision, and the model's FLOPs per image.

The ratio ``images/s * FLOPs per image / matmul FLOP/s`` says how close a runtime gets to what the CPU's matrix
units deliver on a large GEMM of the same precision. A ViT spends > 95 % of its FLOPs in GEMMs, so this ceiling is
the one that matters. The math functions are pure; the measurements import torch lazily.
"""

from __future__ import annotations

import statistics
import time

from cdul_rt.errors import CdulError

MATMUL_PRECISIONS = ("fp32", "bf16")


def measure_matmul_flops(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """Median FLOP/s of an ``n x n @ n x n`` torch matmul (2 n^3 FLOPs) at ``precision``, after one warm-up."""
    import torch

    if precision not in MATMUL_PRECISIONS:
        raise CdulError(f"matmul roofline is measured for {MATMUL_PRECISIONS}, not {precision!r}")
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    with torch.inference_mode():
        a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times)


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


def roofline_precision(precision: str) -> str:
    """Which measured matmul a row is compared with: its own, or bf16 (the fastest measured) for fp16/int8.

    fp16 and int8 have no torch CPU matmul worth calling a ceiling here; comparing them with bf16 keeps the ratio
    meaningful (it is what the best alternative on this CPU reaches).
    """
    return precision if precision in MATMUL_PRECISIONS else "bf16"


def speedup(images_per_s: float, baseline_images_per_s: float) -> float:
    if baseline_images_per_s <= 0:
        raise CdulError("the baseline throughput must be positive")
    return images_per_s / baseline_images_per_s
