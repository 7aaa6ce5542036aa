"""The artifact folder: what ``cdul-rt export`` writes and every graph runtime reads.

Below both :mod:`cdul_rt.export` (which writes folders) and :mod:`cdul_rt.engines` (which runs them), so neither
imports the other for the contract. Torch-free and onnx-free (numpy only).

Modules: :mod:`~cdul_rt.artifacts.manifest` (the typed ``manifest.json`` schema, reading and file checks),
:mod:`~cdul_rt.artifacts.textstore` (stored class text embeddings), :mod:`~cdul_rt.artifacts.folder` (a label
request against a folder: the options it supplies, and the refusal of one exported for another model).
"""
