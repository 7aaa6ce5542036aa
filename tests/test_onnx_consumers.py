"""Every graph cdul-rt writes is valid ONNX and runs the same on an independent runtime.

- ``onnx.checker.check_model(path, full_check=True)`` (the specification, with strict shape inference) on the CLIP
  graphs (visual / text / labeler; fp32, fp16, int8), the Triton serving labeler and encoders of each precision,
  and the classifier graphs (fp32, fp16).
- OpenVINO (CPU, inference precision set to f32: on CPUs with AVX512-BF16 or AMX its default is bf16, which rounds
  the text graph's token ids, 49406 and 49407 alike, and loses the end-of-text position) runs each graph and agrees
  with onnxruntime within a tolerance relative to the spread of the outputs: 1e-4 x std for fp32 and int8 graphs
  (both run the same fp32 / integer arithmetic; measured <= 3e-6 x std), 2e-2 x std for fp16 graphs (onnxruntime
  computes in fp16 where OpenVINO at f32 upcasts the fp16 weights; measured 4.5e-3 x std).
- The generated ``config.pbtxt`` files parse with Triton's own schema (tests/triton_schema.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cdul_rt.engines.onnxrt.loader import SessionFromOnnx  # noqa: E402
from cdul_rt.export.clip import ExportOptions, export_clip  # noqa: E402

from triton_schema import parse_config  # noqa: E402

pytestmark = pytest.mark.slow
PRECISIONS = ("fp32", "fp16", "int8")
REL_TOL = {"fp32": 1e-4, "int8": 1e-4, "fp16": 2e-2}  # x std of the onnxruntime output
CLIP_GRAPHS = ("visual.onnx", "text.onnx", "labeler.onnx")


@pytest.fixture(scope="module")
def clip_exports(tmp_path_factory, tiny_config) -> dict[str, Path]:
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    bundle = load_clip(resolve_model(str(tiny_config), "none"))
    root = tmp_path_factory.mktemp("consumers")
    out = {}
    for p in PRECISIONS:
        out[p] = root / p
        export_clip(ExportOptions(out=out[p], model=str(tiny_config), pretrained="none", classes="voc", precision=p),
                    log=lambda m: None, bundle=bundle)
    return out


@pytest.fixture(scope="module")
def triton_repos(clip_exports, tmp_path_factory) -> dict[str, Path]:
    from cdul_rt.export.triton import TritonOptions, write_triton_repository

    root = tmp_path_factory.mktemp("triton")
    for p, folder in clip_exports.items():
        write_triton_repository(folder, root / p, TritonOptions(max_images=8, opt_images=4, kind="KIND_CPU"),
                                log=lambda m: None)
    return {p: root / p for p in clip_exports}


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory) -> Path:
    """A ResNet-18 classifier run folder (random weights, 32 px) exported to fp32 and fp16 graphs."""
    import torch

    from cdul_rt.export.classifier import export_classifier
    from cdul_rt.train.checkpoint import save_model
    from cdul_rt.train.model import build_classifier

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("classifier-run")
    classes = ["a", "b", "c"]
    meta = {"arch": "resnet18", "classes": classes, "image_size": 32, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "resize": "bilinear", "epoch": 1}
    save_model(run, build_classifier("resnet18", len(classes)).eval().state_dict(), meta)
    out = run.parent / "classifier-onnx"
    export_classifier(run, out)
    return out


def _clip_feed(graph: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(20, 3, 32, 32)).astype(np.float32)  # 2 images of 1 + 3x3 crops (tiny CLIP: 32 px)
    text = rng.normal(size=(7, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    tokens = np.zeros((4, 16), np.int32)
    tokens[:, :5] = [49406, 320, 1125, 539, 49407]  # <sot> a photo of <eot>
    tokens[1, 2:6] = [2368, 539, 320, 49407]
    return {"visual.onnx": {"crops": crops}, "text.onnx": {"tokens": tokens},
            "labeler.onnx": {"crops": crops, "text_embeddings": text, "zeta": np.array([0.3], np.float32),
                             "lambda": np.array([1.0], np.float32)}}[graph]


def _onnxruntime(path: Path, feed: dict, precision: str) -> dict[str, np.ndarray]:
    session = SessionFromOnnx(path, precision=precision)()  # the session options cdul-rt label uses
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {i.name: feed[i.name] for i in session.get_inputs()})))


def _openvino(path: Path, feed: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # not the CPU's bf16 default
    # a tensor may carry several names in OpenVINO (a graph output and the Cast that produces it): match any
    result = compiled([feed[next(n for n in i.get_names() if n in feed)] for i in compiled.inputs])
    return {name: result[next(o for o in compiled.outputs if name in o.get_names())] for name in outputs}


def _agree(path: Path, feed: dict, precision: str) -> None:
    ref = _onnxruntime(path, feed, precision)
    got = _openvino(path, feed, list(ref))
    for name, a in ref.items():
        tol = REL_TOL[precision] * float(np.std(a))
        diff = float(np.abs(a.astype(np.float64) - got[name]).max())
        assert diff <= tol, f"{path.name} {name}: OpenVINO differs from onnxruntime by {diff:.2e} > {tol:.2e}"


def _checked(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("graph", CLIP_GRAPHS)
def test_clip_graphs_are_valid_onnx_and_agree_on_openvino(clip_exports, precision, graph):
    path = clip_exports[precision] / graph
    _checked(path)
    _agree(path, _clip_feed(graph), precision if graph != "text.onnx" or precision != "int8" else "fp32")


def test_fp16_conversion_output_is_sorted_only_because_we_sort_it(clip_exports, tmp_path):
    """The float16 converter alone leaves invalid ONNX (its input casts come last); the export's sort repairs it."""
    from onnxruntime.transformers import float16

    from cdul_rt.export.precision import FP32_OPS

    raw = float16.convert_float_to_float16(onnx.load(str(clip_exports["fp32"] / "visual.onnx")),
                                           keep_io_types=True,
                                           op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP32_OPS)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(raw, full_check=True)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_triton_repository_models_are_valid(triton_repos, clip_exports, precision):
    repo = triton_repos[precision]
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert models == ["labeler", "text", "visual"]
    for name in models:
        _checked(repo / name / "1" / "model.onnx")
        config = parse_config((repo / name / "config.pbtxt").read_text())
        assert config["name"] == name and config["platform"] == "onnxruntime_onnx"
        assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    # the serving labeler (vocabulary baked in, crops [images, 1+g^2, 3, S, S]) on OpenVINO
    crops = _clip_feed("labeler.onnx")["crops"].reshape(2, 10, 3, 32, 32)
    graph_precision = json.loads((repo / "cdul_rt.json").read_text())["models"]["labeler"]["precision"]
    _agree(repo / "labeler" / "1" / "model.onnx", {"crops": crops}, graph_precision)
    labeler = parse_config((repo / "labeler" / "config.pbtxt").read_text())
    assert labeler["input"] == [{"name": "crops", "data_type": "TYPE_FP32", "dims": [10, 3, 32, 32]}]
    classes = len(json.loads((clip_exports[precision] / "manifest.json").read_text())["vocabulary"]["classes"])
    dims = {o["name"]: o["dims"] for o in labeler["output"]}
    assert dims["S_final"] == dims["S_global"] == [classes]


@pytest.mark.parametrize("precision", ("fp32", "fp16"))
def test_classifier_graphs_are_valid_and_agree_on_openvino(classifier_export, precision):
    from cdul_rt.export.classifier import FILES

    path = classifier_export / FILES[precision]
    _checked(path)
    images = np.random.default_rng(1).normal(size=(3, 3, 32, 32))
    _agree(path, {"images": images.astype(np.float16 if precision == "fp16" else np.float32)}, precision)
