"""The native TensorRT runtime (Polygraphy layout): ``builder`` compiles ONNX to engines (TRT 10 and 11),
``build`` decides which graph to compile and whether a stored engine is still good (``export --engine tensorrt``
and :mod:`cdul_rt.prepare` before ``label`` opens a folder), ``cache`` keeps them keyed by what they depend on,
``runner`` executes them with cuda-python buffers, ``loader`` opens a built engine as a labeler session.
``profiles`` and ``precision`` are pure and tested without TensorRT.
"""

from cdul_rt.engines.trt.loader import check_available, open_labeler  # noqa: F401
