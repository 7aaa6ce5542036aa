"""TensorRT build logic that runs without TensorRT: profiles in images of 1+g^2 crops, cache keys, the engine
cache's rebuild decisions, the fp16 verdict on inspector JSON, precision-path choice, and missing-TensorRT errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdul_rt.engines.trt.builder import choose_typing, import_tensorrt, trt_major
from cdul_rt.engines.trt.cache import EngineCache
from cdul_rt.engines.trt.precision import check_fp16, fp32_weight_bytes, layer_precisions, require_fp16
from cdul_rt.engines.trt.profiles import EngineKey, ProfileSpec, describe_mismatch, profile_shapes, shapes_to_json
from cdul_rt.engines.trt.runner import plan_chunks
from cdul_rt.errors import CdulError

LABELER_INPUTS = {"crops": (None, 3, 224, 224), "text_embeddings": (None, 512), "zeta": (1,), "lambda": (1,)}


def test_labeler_profile_counts_whole_images_of_crops():
    spec = ProfileSpec(min_images=1, opt_images=8, max_images=32, opt_classes=80, max_classes=1000)
    shapes = profile_shapes("labeler", LABELER_INPUTS, spec, grid=3)
    assert shapes["crops"] == ((10, 3, 224, 224), (80, 3, 224, 224), (320, 3, 224, 224))
    assert shapes["text_embeddings"] == ((1, 512), (80, 512), (1000, 512))
    assert shapes["zeta"] == ((1,), (1,), (1,)) and shapes["lambda"] == ((1,), (1,), (1,))
    # grid 2 -> 5 crops per image; the ranges follow
    g2 = profile_shapes("visual", {"crops": (None, 3, 224, 224)}, spec, grid=2)["crops"]
    assert [s[0] for s in g2] == [5, 40, 160]


def test_classifier_text_and_serving_labeler_units():
    spec = ProfileSpec(2, 4, 16, 1, 20, 100)
    assert profile_shapes("classifier", {"images": ("batch", 3, 448, 448)}, spec, 3)["images"][2] == (16, 3, 448, 448)
    assert profile_shapes("text", {"tokens": (None, 77)}, spec, 3)["tokens"] == ((1, 77), (20, 77), (100, 77))
    served = profile_shapes("labeler_images", {"crops": (None, 10, 3, 32, 32)}, spec, 3)["crops"]
    assert [s[0] for s in served] == [2, 4, 16]  # whole images, not crops


@pytest.mark.parametrize("spec", [ProfileSpec(0, 1, 2), ProfileSpec(4, 2, 8), ProfileSpec(1, 8, 4),
                                  ProfileSpec(1, 8, 32, 1, 2000, 1000)])
def test_profile_rejects_bad_ranges(spec):
    with pytest.raises(CdulError, match="min <= opt <= max"):
        profile_shapes("labeler", LABELER_INPUTS, spec, 3)


def test_profile_rejects_dynamic_inner_dims_and_unknown_inputs():
    with pytest.raises(CdulError, match="only the leading dimension may be dynamic"):
        profile_shapes("visual", {"crops": (None, 3, None, 224)}, ProfileSpec(), 3)
    with pytest.raises(CdulError, match="unknown meaning"):
        profile_shapes("visual", {"pixels_nhwc": (None, 224, 224, 3)}, ProfileSpec(), 3)
    with pytest.raises(CdulError, match="unknown graph kind"):
        profile_shapes("detector", {"crops": (None, 3, 8, 8)}, ProfileSpec(), 3)


def _key(**over) -> EngineKey:
    shapes = profile_shapes("labeler", LABELER_INPUTS, ProfileSpec(), 3)
    base = dict(onnx_sha256="a" * 64, tensorrt_version="10.3.0", compute_capability="8.6", precision="fp16",
                typing="flag", profile=shapes_to_json(shapes))
    base.update(over)
    return EngineKey(**base)


def test_cache_key_changes_with_every_field():
    k = _key()
    assert k.digest() == _key().digest()  # deterministic
    other_profile = shapes_to_json(profile_shapes("labeler", LABELER_INPUTS, ProfileSpec(max_images=64), 3))
    variants = [_key(onnx_sha256="b" * 64), _key(tensorrt_version="10.5.0"), _key(compute_capability="9.0"),
                _key(precision="fp32"), _key(typing="strong"), _key(profile=other_profile), _key(gpu="NVIDIA L4"),
                _key(workspace_bytes=8 << 30), _key(builder_optimization_level=5)]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and k.digest() not in digests


def test_plan_names_carry_gpu_model_compute_capability_and_tensorrt_version():
    from cdul_rt.engines.trt.cache import plan_stem

    a100 = _key(gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    l4 = _key(gpu="NVIDIA L4", compute_capability="8.9", tensorrt_version="10.5.0")
    assert plan_stem("labeler", "fp16", a100) == "labeler.fp16.nvidia-a100-sxm4-80gb.sm80.trt10.3.0"
    assert plan_stem("labeler", "fp16", l4) == "labeler.fp16.nvidia-l4.sm89.trt10.5.0"
    # the same device with another profile or workspace keeps the name (rebuilt in place with a reason)
    assert plan_stem("labeler", "fp16", _key(gpu="NVIDIA L4", compute_capability="8.9", tensorrt_version="10.5.0",
                                             workspace_bytes=1)) == plan_stem("labeler", "fp16", l4)


def test_mismatch_messages_name_what_changed():
    msg = describe_mismatch(_key().to_dict(), _key(tensorrt_version="10.5.0", compute_capability="9.0").to_dict())
    assert "tensorrt version 10.3.0 -> 10.5.0" in msg and "compute capability 8.6 -> 9.0" in msg
    assert "ONNX graph changed" in describe_mismatch(_key().to_dict(), _key(onnx_sha256="c" * 64).to_dict())
    assert "profile" in describe_mismatch(_key().to_dict(), _key(profile={}).to_dict())


def test_engine_cache_hit_miss_stale_and_truncated(tmp_path):
    cache, key = EngineCache(tmp_path), _key()
    assert cache.lookup("labeler.fp16", key) == (None, None)  # nothing yet: build without a message
    plan = bytes(range(256)) * 40
    path = cache.store("labeler.fp16", key, plan, {"onnx": "labeler.onnx"})
    assert cache.lookup("labeler.fp16", key) == (path, None)
    # another TensorRT version or GPU: rebuild, and say why
    hit, reason = cache.lookup("labeler.fp16", _key(tensorrt_version="11.0.0"))
    assert hit is None and "tensorrt version 10.3.0 -> 11.0.0" in reason
    assert "compute capability 8.6 -> 9.0" in cache.check_runtime("labeler.fp16", "10.3.0", "9.0")
    assert cache.check_runtime("labeler.fp16", "10.3.0", "8.6") is None
    # a truncated copy is caught before TensorRT sees it
    path.write_bytes(plan[:-100])
    hit, reason = cache.lookup("labeler.fp16", key)
    assert hit is None and "truncated" in reason
    # same size, different bytes
    path.write_bytes(plan[::-1])
    assert "modified" in cache.lookup("labeler.fp16", key)[1]
    # a plan without its JSON
    cache.meta_path("labeler.fp16").unlink()
    assert "no readable" in cache.lookup("labeler.fp16", key)[1]


def _layer(kind, *formats):
    return {"Name": kind.lower(), "LayerType": kind,
            "Inputs": [{"Name": "x", "Format/Datatype": formats[0]}],
            "Outputs": [{"Name": "y", "Format/Datatype": f} for f in formats[1:]]}


def test_fp16_verdict_from_layer_information():
    fp16 = {"Layers": [_layer("Reformat", "Row major linear FP32 format", "Row major linear FP16 format"),
                       _layer("CaskConvolution", "Row major linear FP32 format", "Row major linear FP16 format"),
                       _layer("CaskGemmMatrixMultiply", "Half", "Half"),
                       _layer("CaskConvolution", "Channel major FP16 format where channel % 8 == 0", "Half"),
                       _layer("Normalization", "Float", "Float")], "Bindings": ["crops"]}
    assert layer_precisions(fp16) == {"FP16": 3, "FP32": 1}  # Reformat is bookkeeping
    check = check_fp16(json.dumps(fp16), engine_bytes=10, fp32_weight_bytes=10)  # size ignored when layers exist
    assert check.ok and check.method == "layers" and "75%" in check.detail
    fp32 = {"Layers": [_layer("CaskConvolution", "Row major linear FP32 format", "Float"),
                       _layer("CaskGemmMatrixMultiply", "Float", "Float")]}
    bad = check_fp16(fp32, engine_bytes=1, fp32_weight_bytes=100)
    assert not bad.ok and "FP32 2" in bad.detail
    with pytest.raises(CdulError, match="asked for fp16 but is not fp16"):
        require_fp16(bad, "labeler")


def _layer11(kind, *types):
    """TensorRT 11 layout: ``DataType`` and ``Format`` apart (migration guide, IEngineInspector JSON output)."""
    fmt = {"Half": "Row major linear FP16 format (kLINEAR)", "Float": "Row major linear FP32 format (kLINEAR)"}
    return {"Name": kind.lower(), "LayerType": kind,
            "Inputs": [{"Name": "x", "Location": "Device", "DataType": types[0], "Format": fmt[types[0]]}],
            "Outputs": [{"Name": "y", "Location": "Device", "DataType": t, "Format": fmt[t]} for t in types[1:]]}


def test_fp16_verdict_reads_both_inspector_layouts():
    trt10 = {"Layers": [_layer("CaskConvolution", "Row major linear FP32 format", "Row major linear FP16 format"),
                        _layer("CaskGemmMatrixMultiply", "Half", "Half"),
                        _layer("Normalization", "Float", "Float")], "Bindings": ["crops", "S_final"]}
    trt11 = {"Layers": [_layer11("CaskConvolution", "Float", "Half"), _layer11("CaskGemmMatrixMultiply", "Half", "Half"),
                        _layer11("Normalization", "Float", "Float")],
             "I/O Tensors": [{"Name": "crops", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 3, 8, 8],
                              "Location": "Device", "IsShapeInferenceIO": False,
                              "ProfileInfo": [{"MinShape": [10, 3, 8, 8], "OptShape": [40, 3, 8, 8],
                                               "MaxShape": [80, 3, 8, 8],
                                               "Format": "Row major linear FP32 format (kLINEAR)"}]}]}
    assert layer_precisions(trt10) == layer_precisions(trt11) == {"FP16": 2, "FP32": 1}
    for info in (trt10, trt11):
        check = check_fp16(json.dumps(info), engine_bytes=10, fp32_weight_bytes=10)
        assert check.ok and check.method == "layers"
    fp32_11 = {"Layers": [_layer11("CaskGemmMatrixMultiply", "Float", "Float")] * 2, "I/O Tensors": []}
    assert layer_precisions(fp32_11) == {"FP32": 2} and not check_fp16(fp32_11, 1, 100).ok


def test_opaque_myelin_layers_defer_to_the_engine_size():
    """A whole transformer fused into one Myelin layer shows only the fp32 graph I/O; the size decides then."""
    fused = {"Layers": [_layer("Myelin", "Float", "Float"), _layer("CaskConvolution", "Float", "Float")]}
    assert layer_precisions(fused) == {"FP32": 1, "opaque": 1}
    big_fp16 = check_fp16(fused, engine_bytes=180 * 2**20, fp32_weight_bytes=350 * 2**20)
    assert big_fp16.ok and big_fp16.method == "size"
    big_fp32 = check_fp16(fused, engine_bytes=352 * 2**20, fp32_weight_bytes=350 * 2**20)
    assert not big_fp32.ok and "1.01 x" in big_fp32.detail
    tiny = check_fp16(fused, engine_bytes=1 << 20, fp32_weight_bytes=300_000)  # overhead dominates: no verdict
    assert not tiny.ok and "cannot verify" in tiny.detail


def test_strongly_typed_network_types_decide():
    typed = [("CONVOLUTION", "HALF"), ("MATRIX_MULTIPLY", "HALF"), ("MATRIX_MULTIPLY", "HALF"),
             ("NORMALIZATION", "FLOAT"), ("SOFTMAX", "FLOAT"), ("MATRIX_MULTIPLY", "FLOAT")]
    check = check_fp16(None, engine_bytes=1, fp32_weight_bytes=1, network_layers=typed)
    assert check.ok and check.method == "network types" and "FP16 3, FP32 1" in check.detail
    fp32_graph = [(t, "FLOAT") for t, _ in typed]
    assert not check_fp16(None, 1, 1, network_layers=fp32_graph).ok


def test_fp16_verdict_falls_back_to_engine_size():
    dynamic = {"Layers": [_layer("CaskConvolution", "N/A due to dynamic shapes", "N/A due to dynamic shapes")]}
    assert layer_precisions(dynamic) == {}
    assert check_fp16(dynamic, engine_bytes=60 * 2**20, fp32_weight_bytes=100 * 2**20).ok
    big = check_fp16(None, engine_bytes=101 * 2**20, fp32_weight_bytes=100 * 2**20)
    assert not big.ok and big.method == "size" and "1.01 x" in big.detail
    assert not check_fp16(None, 10, 0).ok


def test_fp32_weight_bytes_counts_fp16_graphs_at_fp32_size():
    from onnx import TensorProto, helper, numpy_helper

    w32 = numpy_helper.from_array(np.zeros((10, 20), np.float32), "w")
    w16 = numpy_helper.from_array(np.zeros((10, 20), np.float16), "w")
    idx = numpy_helper.from_array(np.zeros(5, np.int64), "i")
    for w in (w32, w16):
        graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [10, 20])],
                                  initializer=[w, idx])
        assert fp32_weight_bytes(helper.make_model(graph)) == 10 * 20 * 4 + 5 * 8


def test_precision_path_per_tensorrt_version():
    assert choose_typing(10, "fp16", None) == "flag"  # TRT 10: the builder flag on the fp32 graph
    assert choose_typing(11, "fp16", None) == "strong"  # TRT 11: strongly typed fp16 graph
    assert choose_typing(10, "fp16", "strong") == "strong"
    assert choose_typing(10, "fp32", None) is None
    with pytest.raises(CdulError, match="TensorRT 11 removed BuilderFlag.FP16"):
        choose_typing(11, "fp16", "flag")
    with pytest.raises(CdulError, match="too old"):
        choose_typing(8, "fp16", None)
    with pytest.raises(CdulError, match="fp16 or fp32"):
        choose_typing(10, "int8", None)
    assert trt_major("10.13.3.9") == 10 and trt_major("11.2.1") == 11


@pytest.mark.parametrize("items, lo, hi, chunk", [(7, 1, 3, 3), (8, 1, 8, 8), (8, 1, 8, None), (9, 2, 4, None),
                                                   (9, 2, 4, 4), (1, 1, 8, None), (33, 1, 32, None), (5, 5, 8, None)])
def test_chunks_cover_every_item_once_within_the_profile(items, lo, hi, chunk):
    bounds = plan_chunks(items, lo, hi, chunk)
    assert bounds[0][0] == 0 and bounds[-1][1] == items
    assert all(a == b for (_, a), (b, _) in zip(bounds, bounds[1:]))  # contiguous, in order
    sizes = [b - a for a, b in bounds]
    assert all(lo <= n <= hi for n in sizes) and max(sizes) - min(sizes) <= 1
    if chunk is None and items >= 2 * lo:
        assert len(bounds) >= 2  # the default always leaves something to overlap


def test_chunk_sizes_examples():
    assert plan_chunks(8, 1, 8) == [(0, 4), (4, 8)]  # default: two halves, so copies overlap compute
    assert plan_chunks(8, 1, 8, chunk_items=8) == [(0, 8)]  # an explicit size is kept
    assert plan_chunks(9, 2, 4, chunk_items=4) == [(0, 3), (3, 6), (6, 9)]  # not 4 + 4 + 1: 1 < min
    with pytest.raises(CdulError, match="below the engine's profile minimum of 2"):
        plan_chunks(1, 2, 4)
    with pytest.raises(CdulError, match="cannot be cut into runs of 3 to 4"):
        plan_chunks(5, 3, 4)
    with pytest.raises(CdulError, match="--trt-max-images"):
        plan_chunks(5, 3, 4)


def test_missing_tensorrt_names_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    with pytest.raises(CdulError, match=r"pip install 'cdul-rt\[tensorrt\]'") as err:
        import_tensorrt()
    assert "--runtime onnxruntime" in str(err.value)
