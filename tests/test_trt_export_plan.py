"""Everything up to the TensorRT build, on real exports of a tiny CLIP (fp32 and fp16 artifact folders): which graph
each precision path compiles, the profile TensorRT would get, the engine key, and the Triton repository built from
the same graphs (serving labeler equal to the exported one under onnxruntime, for fp32 and fp16 graphs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdul_rt.engines.trt.builder import resolve_typing
from cdul_rt.engines.trt.precision import fp32_weight_bytes
from cdul_rt.engines.trt.profiles import ProfileSpec
from cdul_rt.errors import CdulError
from cdul_rt.engines.trt.build import (
    available_precisions,
    engine_key,
    onnx_input_shapes,
    onnx_precision_for,
    plan_sources,
)
from cdul_rt.export.triton import TritonOptions, serving_labeler, write_triton_repository

from triton_schema import parse_config  # Triton's own model_config.proto

CPI = 10


def _session(model):
    """onnxruntime CPU session at ORT_ENABLE_EXTENDED: onnxruntime 1.32's ORT_ENABLE_ALL (the default) segfaults on
    the fp16 graphs of the tiny CLIP while creating the session (the CPU layout transformer); reported."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    import json as _json

    from conftest import TINY_CLIP_CONFIG

    from cdul_rt.export.clip import ExportOptions, export_clip

    config = tmp_path_factory.mktemp("trt-models") / "tiny-test-clip.json"
    config.write_text(_json.dumps(TINY_CLIP_CONFIG))
    out = {}
    for precision in ("fp32", "fp16"):
        folder = tmp_path_factory.mktemp(f"trt-export-{precision}")
        export_clip(ExportOptions(out=folder, model=str(config), pretrained="none", classes="voc",
                                  precision=precision), log=lambda m: None)
        out[precision] = folder
    return out


def test_precision_paths_pick_the_right_graphs(exports):
    fp32, fp16 = exports["fp32"], exports["fp16"]
    both = [fp32, fp16]
    assert available_precisions([fp32]) == {"fp32"} and available_precisions(both) == {"fp32", "fp16"}
    # TRT 10 flag path: the fp32 graph + BuilderFlag.FP16
    (src,) = plan_sources(both, ("labeler",), "fp16", "flag")
    assert src.onnx == fp32 / "labeler.onnx" and src.onnx_precision == "fp32" and src.grid == 3
    # strongly typed (TRT 11, or TRT 10 on request): the fp16 graph
    srcs = plan_sources(both, ("labeler", "visual", "text"), "fp16", "strong")
    assert [s.onnx for s in srcs] == [fp16 / "labeler.onnx", fp16 / "visual.onnx", fp16 / "text.onnx"]
    # TRT 10 with only the fp16 export at hand compiles it strongly typed instead of failing
    assert resolve_typing(10, "fp16", None, available_precisions([fp16])) == "strong"
    assert resolve_typing(10, "fp16", None, available_precisions(both)) == "flag"
    with pytest.raises(CdulError, match="export the fp16 graphs first"):
        plan_sources([fp32], ("labeler",), "fp16", "strong")
    assert onnx_precision_for("strong", "fp16") == "fp16" and onnx_precision_for(None, "fp32") == "fp32"


def test_engine_key_and_profile_from_the_exported_labeler(exports):
    (src,) = plan_sources([exports["fp32"]], ("labeler",), "fp16", "flag")
    inputs = onnx_input_shapes(src.onnx)
    assert set(inputs) == {"crops", "text_embeddings", "zeta", "lambda"}
    key, shapes = engine_key(src, "f" * 64, "10.3.0", "8.9", "fp16", "flag", ProfileSpec(1, 4, 8, 1, 20, 64))
    assert shapes["crops"] == ((CPI, 3, 32, 32), (4 * CPI, 3, 32, 32), (8 * CPI, 3, 32, 32))
    assert shapes["text_embeddings"] == ((1, 32), (20, 32), (64, 32))
    assert shapes["zeta"] == ((1,), (1,), (1,))
    assert key.profile["crops"][2] == [80, 3, 32, 32] and key.typing == "flag"
    (text,) = plan_sources([exports["fp32"]], ("text",), "fp32", None)
    _, tshapes = engine_key(text, "0" * 64, "10.3.0", "8.9", "fp32", None, ProfileSpec(1, 4, 8, 1, 20, 64))
    ((tok_min, tok_opt, tok_max),) = tshapes.values()
    assert tok_min[0] == 1 and tok_opt[0] == 20 and tok_max[0] == 64 and tok_min[1:] == tok_max[1:]


def test_fp16_export_has_the_weights_of_the_fp32_one(exports):
    """The size-based fp16 check compares an engine with the fp32 weight bytes, from either graph."""
    import onnx

    a = fp32_weight_bytes(onnx.load(str(exports["fp32"] / "visual.onnx")))
    b = fp32_weight_bytes(onnx.load(str(exports["fp16"] / "visual.onnx")))
    assert a > 0 and abs(a - b) / a < 0.01


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-6), ("fp16", 1e-3)])
def test_serving_labeler_on_real_exports(exports, precision, tol):
    import onnx

    folder = exports[precision]
    manifest = json.loads((folder / "manifest.json").read_text())
    text = np.load(folder / manifest["vocabulary"]["embeddings"])
    crops = np.random.default_rng(0).normal(size=(3 * CPI, 3, 32, 32)).astype(np.float32)
    ref_sess = _session(str(folder / "labeler.onnx"))
    feed = {"crops": crops, "text_embeddings": text, "zeta": np.array([0.3], np.float32),
            "lambda": np.array([1.0], np.float32)}
    ref = ref_sess.run(None, {i.name: feed[i.name] for i in ref_sess.get_inputs()})
    served = serving_labeler(onnx.load(str(folder / "labeler.onnx")), CPI, text, 0.3, 1.0)
    out = _session(served.SerializeToString()).run(None, {"crops": crops.reshape(3, CPI, 3, 32, 32)})
    widths = {"image_embeddings": manifest["model"]["embed_dim"]}  # [images, D]; the scores are [images, C]
    for o, a, b in zip(ref_sess.get_outputs(), ref, out):
        assert a.shape == b.shape == (3, widths.get(o.name, len(manifest["vocabulary"]["classes"])))
        assert np.abs(a - b).max() <= tol


def test_triton_repository_from_a_real_export(exports, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repository(exports["fp16"], repo, TritonOptions(max_images=8, opt_images=4), log=lambda m: None)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["labeler", "text", "visual"]
    text = parse_config((repo / "text" / "config.pbtxt").read_text())
    assert text["input"][0]["data_type"] == "TYPE_INT32" and text["output"][0]["dims"] == [32]
    vis = parse_config((repo / "visual" / "config.pbtxt").read_text())
    assert vis["max_batch_size"] == 80 and vis["dynamic_batching"]["preferred_batch_size"] == [20, 40, 80]
    info = json.loads((repo / "cdul_rt.json").read_text())
    assert info["models"]["labeler"]["precision"] == "fp16" and len(info["classes"]) == 20
    for model in ("labeler", "text", "visual"):
        assert (repo / model / "1" / "model.onnx").is_file()
