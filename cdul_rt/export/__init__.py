"""Export CLIP to ONNX artifact folders (visual, text and fused labeler graphs + manifest) and verify them.

Importing this package is light: torch, onnx and onnxruntime are imported by the functions that use them.
The folder contract lives below in :mod:`cdul_rt.artifacts`. Modules: :mod:`~cdul_rt.export.clip`
(the exporter), :mod:`~cdul_rt.export.precision` (fp16 / int8), :mod:`~cdul_rt.export.verify` (parity tables).
"""
