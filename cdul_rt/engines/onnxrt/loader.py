"""Load an artifact folder into ONNX Runtime sessions; open the labeler session ``cdul-rt label`` runs.

Nothing here imports torch: the manifest says everything about the model, class embeddings come from the folder
(or from ``text.onnx`` with the torch-free tokenizer for a new vocabulary). The folder is ``--engine-dir`` or the
cached export that :mod:`cdul_rt.prepare` found or made before the runtime opens it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cdul_rt.artifacts.folder import check_request
from cdul_rt.artifacts.manifest import Manifest, verify_artifacts
from cdul_rt.engines import gpu
from cdul_rt.engines.request import OrtOptions, RuntimeRequest, as_request
from cdul_rt.engines.session import LabelerSession
from cdul_rt.errors import CdulError, require
from cdul_rt.vocab import Vocabulary


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def ort_trt_profile(manifest: Manifest, batch_images: int, classes: int) -> dict:
    """The labeler's optimization profile for onnxruntime's TensorRT execution provider, in images of 1+g^2 crops
    (opt = the label batch, max = at least 32 images) and classes (opt = this vocabulary): the dynamic inputs only,
    taken from the manifest (no onnx import on the torch-free path)."""
    from cdul_rt.engines.trt.profiles import ProfileSpec, profile_shapes

    s, d = manifest.image_size, manifest.embed_dim
    spec = ProfileSpec(1, batch_images, max(32, batch_images), 1, classes, max(1024, classes))
    inputs = {"crops": (None, 3, s, s), "text_embeddings": (None, d)}
    return profile_shapes("labeler", inputs, spec, int(manifest.labeler["grid"]))


def labeler_providers(request: RuntimeRequest, manifest: Manifest, classes: int) -> tuple[list, list]:
    """(providers of the text graph, providers of the labeler graph) for ``request.device`` through the one picker,
    :func:`cdul_rt.engines.gpu.ort_providers`; with ``--ort-tensorrt`` (:class:`OrtOptions` ``tensorrt_ep``) the
    labeler gets onnxruntime's TensorRT execution provider (its profile names the labeler's inputs, so the text graph
    stays on CUDA)."""
    from cdul_rt.engines.gpu import ort_providers

    require("onnxruntime", "runtime")
    base = ort_providers(request.device, manifest.precision)
    if not _ort_options(request).tensorrt_ep:
        return base, base
    profile = ort_trt_profile(manifest, int(request.batch_size), classes)
    return base, ort_providers(request.device, manifest.precision, use_tensorrt=True, profile=profile)


def _ort_options(request) -> OrtOptions:
    """The request's :class:`OrtOptions`; a namespace in the shape label options had before the typed request
    (``device``, ``batch_size``, an ``extra`` dict with ``ort_tensorrt``: issue 14's test builds one) is read too."""
    if isinstance(request, RuntimeRequest):
        return request.options
    return OrtOptions(tensorrt_ep=bool((request.extra or {}).get("ort_tensorrt")))


class SessionFromOnnx:
    """Lazy loader: ``SessionFromOnnx(path, providers)()`` builds the ``InferenceSession`` (Polygraphy style)."""

    def __init__(self, path: str | Path, providers: list | None = None, threads: int | None = None,
                 precision: str = "fp32") -> None:
        self.path = Path(path)
        self.providers = providers or gpu.ort_providers("cpu")
        self.threads = threads or cpu_threads()
        # Measured with onnxruntime 1.32 on CPU: the NCHWc layout transformer segfaults on our fp16 graphs (the
        # fp16 patch-embedding Conv); without it the graph runs and nothing else changes (one Conv per ViT).
        self.disabled_optimizers = ["NchwcTransformer"] if precision == "fp16" else []

    def __call__(self):
        ort = require("onnxruntime", "runtime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT's warnings about unused initializers etc. are not the user's problem
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers,
                                        disabled_optimizers=self.disabled_optimizers or None)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign graph: say which file and what to do
            raise CdulError(f"onnxruntime cannot load {self.path}: {type(exc).__name__}: {str(exc)[:300]}; "
                            "re-export the folder with `cdul-rt export`") from exc


def _encode_vocabulary(folder: Path, manifest: Manifest, prompts: list[str], providers: list) -> np.ndarray:
    from cdul_rt.engines.onnxrt.encoders import OnnxTextEncoder

    encoder = OnnxTextEncoder(folder, manifest, providers)
    try:
        return encoder(prompts)
    finally:
        encoder.close()


def class_embeddings(folder: Path, manifest: Manifest, vocab: Vocabulary, template: str,
                     providers: list | None = None) -> np.ndarray:
    """Stored embeddings of (vocab, template), else computed with ``text.onnx`` and stored for next time."""
    from cdul_rt.artifacts.textstore import load_text_embeddings, save_text_embeddings

    weights = manifest.weights_hash
    emb = load_text_embeddings(folder, vocab, template, manifest.embed_dim, weights)
    if emb is not None:
        return emb
    emb = _encode_vocabulary(folder, manifest, vocab.prompts(template), providers or gpu.ort_providers("cpu"))
    try:
        save_text_embeddings(folder, vocab, template, emb, weights)
    except OSError:  # a read-only artifact folder still works; the vocabulary is just encoded again next time
        pass
    return emb


def check_available(request: RuntimeRequest) -> None:
    """What can be refused before a folder exists (:func:`cdul_rt.prepare.prepare_request` asks first)."""
    require("onnxruntime", "runtime")


def artifact_folder(request: RuntimeRequest) -> Path:
    """The folder a graph runtime opens: ``request.engine_dir``, which :func:`cdul_rt.prepare.prepare_request`
    fills (the cached export) before the runtime is called."""
    if request.engine_dir is None:
        raise CdulError(f"--runtime {request.runtime} runs an exported artifact folder and none was given: pass "
                        "--engine-dir DIR (`cdul-rt export --out DIR`), or open it through "
                        "cdul_rt.pipeline.open_session, which finds or makes the cached export")
    return Path(request.engine_dir)


def open_labeler(request: RuntimeRequest, vocab: Vocabulary) -> LabelerSession:
    """The ``--runtime onnxruntime`` session (``request``: a :class:`RuntimeRequest` with :class:`OrtOptions`, or
    label options naming their folder)."""
    from cdul_rt.engines.onnxrt.runner import OnnxLabelerRunner

    req = as_request(request)
    check_available(req)
    folder = artifact_folder(req)
    manifest = verify_artifacts(folder)  # every file (size + sha256) before any runtime starts, as promised
    check_request(manifest, folder, req.model, req.precision, req.grid, req.aggregation.mode)
    text_providers, providers = labeler_providers(req, manifest, len(vocab.prompts(req.template)))
    text = class_embeddings(folder, manifest, vocab, req.template, text_providers)
    session = SessionFromOnnx(folder / "labeler.onnx", providers, precision=manifest.precision)
    runner = OnnxLabelerRunner(session, manifest.crops_per_image, manifest.image_size, manifest.embed_dim,
                               **req.aggregation.numbers())
    return LabelerSession(runner, text, manifest.preprocess_config(), manifest.model.display,
                          manifest.weights_hash, manifest.precision, "onnxruntime",
                          **folder_encoders(folder, manifest, providers))


def folder_encoders(folder: Path, manifest: Manifest, providers: list) -> dict:
    """``encode_texts`` / ``encode_images`` of a :class:`LabelerSession` from the folder's text and visual graphs
    (opened on first use); ``encode_texts`` is left out when the folder cannot tokenise without torch."""
    from cdul_rt.engines.onnxrt.encoders import OnnxTextEncoder, OnnxVisualEncoder

    out = {"encode_images": OnnxVisualEncoder(folder, manifest, providers)} if "visual.onnx" in manifest.files else {}
    if manifest.tokenizer.kind == "clip-bpe" and "text.onnx" in manifest.files:
        out["encode_texts"] = OnnxTextEncoder(folder, manifest, providers)
    return out

