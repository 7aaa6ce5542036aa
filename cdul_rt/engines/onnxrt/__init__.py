"""The ONNX Runtime runtime: runs an artifact folder from ``cdul-rt export`` without torch.

CPU by default; CUDA / TensorRT execution providers with onnxruntime-gpu and ``--device cuda``.
"""

from cdul_rt.engines.onnxrt.loader import SessionFromOnnx, check_available, open_labeler  # noqa: F401
