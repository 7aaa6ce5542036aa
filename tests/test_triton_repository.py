"""Triton model repository: config.pbtxt parsed back with Triton's own schema (tests/triton_schema.py) and checked, the serving labeler (batched by image, vocabulary
baked in) equal to the exported labeler under onnxruntime, and the repository layout from an artifact folder.

The artifact folder is built here from small hand-made ONNX graphs with the labeler's I/O contract (crops, text
embeddings, zeta, lambda -> S_final, S_global, S_ag) and the exporter's manifest, so these tests need neither
torch nor a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.export.triton import (
    ModelConfig,
    TensorConfig,
    TritonOptions,
    config_pbtxt,
    preferred_sizes,
    serving_labeler,
    write_triton_repository,
)

from triton_schema import parse_config

S, D, C, GRID = 8, 6, 5, 3
CPI = 1 + GRID * GRID


def labeler_graph(seed: int = 0, size: int = S, dim: int = D):
    """crops [n,3,S,S] -> linear embedding -> L2 norm -> softmax(100 cos) -> CDUL aggregation (opset 17)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(3 * size * size, dim)).astype(np.float32), "w")
    consts = [w, numpy_helper.from_array(np.array([100.0], np.float32), "scale"),
              numpy_helper.from_array(np.array([-1, CPI], np.int64), "groups"),
              numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([1], np.int64), "one"),
              numpy_helper.from_array(np.array([CPI], np.int64), "cpi"),
              numpy_helper.from_array(np.array([0.5], np.float32), "half")]
    n = helper.make_node
    nodes = [
        n("Flatten", ["crops"], ["flat"], axis=1), n("MatMul", ["flat", "w"], ["emb"]),
        n("LpNormalization", ["emb"], ["img"], axis=-1, p=2), n("LpNormalization", ["text_embeddings"], ["txt"],
                                                                 axis=-1, p=2),
        n("Transpose", ["txt"], ["txt_t"], perm=[1, 0]), n("MatMul", ["img", "txt_t"], ["cos"]),
        n("Mul", ["cos", "scale"], ["logits"]), n("Softmax", ["logits"], ["s"], axis=-1),
        n("Shape", ["s"], ["cdim"], start=1), n("Concat", ["groups", "cdim"], ["grouped"], axis=0),
        n("Reshape", ["s", "grouped"], ["s3"]),
        n("Gather", ["s3", "zero"], ["g3"], axis=1), n("Squeeze", ["g3", "one"], ["S_global"]),
        n("Slice", ["s3", "one", "cpi", "one"], ["local"]),
        n("ReduceMax", ["local"], ["alpha"], axes=[1], keepdims=0),
        n("ReduceMin", ["local"], ["beta"], axes=[1], keepdims=0),
        n("GreaterOrEqual", ["alpha", "zeta"], ["gamma"]), n("Where", ["gamma", "alpha", "beta"], ["S_ag"]),
        n("Add", ["S_global", "S_ag"], ["sum"]), n("Sub", ["S_global", "S_ag"], ["diff"]),
        n("Abs", ["diff"], ["adiff"]), n("Mul", ["adiff", "lambda"], ["ladiff"]),
        n("Add", ["sum", "ladiff"], ["tot"]), n("Mul", ["tot", "half"], ["S_final"]),
    ]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("crops", f, ["n", 3, size, size]),
              helper.make_tensor_value_info("text_embeddings", f, ["classes", dim]),
              helper.make_tensor_value_info("zeta", f, [1]), helper.make_tensor_value_info("lambda", f, [1])]
    outputs = [helper.make_tensor_value_info(o, f, ["k", "classes"]) for o in ("S_final", "S_global", "S_ag")]
    graph = helper.make_graph(nodes, "labeler", inputs, outputs, initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def visual_graph(size: int = S, dim: int = D):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).normal(size=(3 * size * size, dim)).astype(np.float32), "w")
    nodes = [helper.make_node("Flatten", ["crops"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["e"]),
             helper.make_node("LpNormalization", ["e"], ["image_embeddings"], axis=-1, p=2)]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "visual", [helper.make_tensor_value_info("crops", f, ["n", 3, size, size])],
                              [helper.make_tensor_value_info("image_embeddings", f, ["n", dim])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_artifacts(folder: Path, classes=("cat", "dog", "car", "tree", "boat")) -> Path:
    """An artifact folder in the exporter's format (manifest.json schema 1) holding the graphs above."""
    import onnx

    from cdul_rt.artifacts.manifest import Manifest

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(labeler_graph(), str(folder / "labeler.onnx"))
    onnx.save(visual_graph(), str(folder / "visual.onnx"))
    emb = np.random.default_rng(2).normal(size=(len(classes), D)).astype(np.float32)
    (folder / "text_embeddings").mkdir(exist_ok=True)
    np.save(folder / "text_embeddings" / "voc.npy", emb)
    m = Manifest(model={"arch": "synthetic", "display": "synthetic.test", "weights_hash": "seed0", "embed_dim": D,
                        "image_size": S, "logit_scale": float(np.log(100))},
                 preprocess={"size": S}, tokenizer={"kind": "none"},
                 vocabulary={"name": "test", "classes": list(classes), "prompts": list(classes),
                             "template": "a photo of the {}", "embeddings": "text_embeddings/voc.npy"},
                 labeler={"grid": GRID, "crops_per_image": CPI, "mode": "cdul", "zeta": 0.3, "lambda": 1.0,
                          "inputs": ["crops", "text_embeddings", "zeta", "lambda"],
                          "outputs": ["S_final", "S_global", "S_ag"]},
                 precision="fp32", opset=17, exporter="test", versions={}, created="now")
    m.add_file(folder, "labeler.onnx", "labeler")
    m.add_file(folder, "visual.onnx", "visual")
    m.add_file(folder, "text_embeddings/voc.npy", "text_embeddings")
    m.write(folder)
    return folder


def test_pbtxt_round_trip_keeps_every_field():
    cfg = ModelConfig("visual", "onnxruntime", 320, (TensorConfig("crops", "TYPE_FP32", (3, 224, 224)),),
                      (TensorConfig("image_embeddings", "TYPE_FP32", (512,)),), (40, 80, 320), 500, 2,
                      parameters={"note": "x"})
    back = parse_config(config_pbtxt(cfg))
    assert back["name"] == "visual" and back["platform"] == "onnxruntime_onnx" and back["max_batch_size"] == 320
    assert back["input"] == [{"name": "crops", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}]
    assert back["output"][0]["dims"] == [512]
    assert back["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert back["dynamic_batching"] == {"preferred_batch_size": [40, 80, 320], "max_queue_delay_microseconds": 500}
    assert back["parameters"] == {"note": {"string_value": "x"}}
    plan = parse_config(config_pbtxt(ModelConfig("c", "tensorrt", 0, cfg.inputs, cfg.outputs)))
    assert plan["platform"] == "tensorrt_plan" and "dynamic_batching" not in plan


def test_schema_refuses_what_triton_would_refuse():
    """The check is Triton's schema, not a lenient reader: a wrong enum value or field name is an error."""
    from google.protobuf.text_format import ParseError

    good = config_pbtxt(ModelConfig("m", "onnxruntime", 8, (TensorConfig("a", "TYPE_INT32", (77,)),),
                                    (TensorConfig("b", "TYPE_FP32", (-1,)),)))
    assert parse_config(good)["input"][0]["data_type"] == "TYPE_INT32"
    for bad in (good.replace("TYPE_INT32", "TYPE_I32"), good.replace("max_batch_size", "max_batch"),
                good.replace("KIND_GPU", "GPU")):
        with pytest.raises(ParseError):
            parse_config(bad)


def test_preferred_batch_sizes_are_whole_ten_crop_groups():
    sizes = preferred_sizes(CPI, opt=8, largest=320)
    assert sizes == (40, 80, 320) and all(s % CPI == 0 for s in sizes)
    assert preferred_sizes(1, 8, 32) == (4, 8, 32)
    assert all(s % 5 == 0 for s in preferred_sizes(5, 3, 33))  # max not a multiple: capped to one
    with pytest.raises(CdulError):
        preferred_sizes(10, 8, 5)
    with pytest.raises(CdulError, match="max_batch_size >= 1"):
        config_pbtxt(ModelConfig("x", "onnxruntime", 0, (), (), (10,)))


def test_serving_labeler_equals_exported_labeler():
    import onnxruntime as ort

    model = labeler_graph()
    rng = np.random.default_rng(3)
    text = rng.normal(size=(C, D)).astype(np.float32)
    crops = rng.normal(size=(4 * CPI, 3, S, S)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"crops": crops, "text_embeddings": text, "zeta": np.array([0.3], np.float32),
               "lambda": np.array([1.0], np.float32)})
    served = serving_labeler(model, CPI, text, zeta=0.3, lam=1.0)
    sess = ort.InferenceSession(served.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["crops"]
    assert sess.get_inputs()[0].shape == ["images", CPI, 3, S, S]
    out = sess.run(None, {"crops": crops.reshape(4, CPI, 3, S, S)})
    for a, b in zip(ref, out):
        assert a.shape == b.shape == (4, C)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # requests merged by Triton's batcher = the images of both, in order
    one = sess.run(None, {"crops": crops[:CPI].reshape(1, CPI, 3, S, S)})[0]
    np.testing.assert_allclose(one[0], out[0][0], atol=1e-6)
    # zeta is honoured once baked: a different zeta changes S_ag somewhere
    other = serving_labeler(model, CPI, text, zeta=0.99, lam=1.0)
    s_ag = ort.InferenceSession(other.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["S_ag"], {"crops": crops.reshape(4, CPI, 3, S, S)})[0]
    assert not np.allclose(s_ag, out[2])


def test_serving_labeler_rejects_other_graphs():
    with pytest.raises(CdulError, match="no 'crops' input"):
        serving_labeler(visual_graph().__class__.FromString(_renamed_visual()), CPI, np.zeros((C, D)), 0.3, 1.0)


def _renamed_visual() -> bytes:
    m = visual_graph()
    m.graph.input[0].name = "pixels"
    m.graph.node[0].input[0] = "pixels"
    return m.SerializeToString()


def test_repository_layout_and_configs(tmp_path):
    import onnxruntime as ort

    art = make_artifacts(tmp_path / "art")
    repo = tmp_path / "repo"
    logs: list[str] = []
    write_triton_repository(art, repo, TritonOptions(max_images=16, opt_images=4, kind="KIND_CPU"),
                            log=logs.append)
    assert sorted(p.name for p in repo.iterdir()) == ["cdul_rt.json", "labeler", "visual"]
    lab = parse_config((repo / "labeler" / "config.pbtxt").read_text())
    assert lab["max_batch_size"] == 16 and lab["platform"] == "onnxruntime_onnx"
    assert lab["input"] == [{"name": "crops", "data_type": "TYPE_FP32", "dims": [CPI, 3, S, S]}]
    assert {o["name"]: o["dims"] for o in lab["output"]} == {"S_final": [C], "S_global": [C], "S_ag": [C]}
    assert lab["dynamic_batching"]["preferred_batch_size"] == [2, 4, 16]
    vis = parse_config((repo / "visual" / "config.pbtxt").read_text())
    assert vis["max_batch_size"] == 16 * CPI and vis["input"][0]["dims"] == [3, S, S]
    assert all(s % CPI == 0 for s in vis["dynamic_batching"]["preferred_batch_size"])
    assert vis["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    # the versioned model file runs and its outputs match the config
    sess = ort.InferenceSession(str(repo / "labeler" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (s_final,) = sess.run(["S_final"], {"crops": np.zeros((2, CPI, 3, S, S), np.float32)})
    assert s_final.shape == (2, C)
    info = json.loads((repo / "cdul_rt.json").read_text())
    assert info["classes"] == ["cat", "dog", "car", "tree", "boat"] and info["crops_per_image"] == CPI
    assert any("tritonserver --model-repository" in line for line in logs)


def test_repository_refuses_damaged_artifacts_and_unknown_backend(tmp_path):
    art = make_artifacts(tmp_path / "art")
    with pytest.raises(CdulError, match="unknown Triton backend"):
        write_triton_repository(art, tmp_path / "r", TritonOptions(backend="tflite"))
    data = (art / "labeler.onnx").read_bytes()
    (art / "labeler.onnx").write_bytes(data[:-10])
    with pytest.raises(CdulError, match="truncated"):
        write_triton_repository(art, tmp_path / "r")
    (art / "labeler.onnx").write_bytes(data)
    with pytest.raises(CdulError, match="no fp16 graphs"):
        write_triton_repository(art, tmp_path / "r", TritonOptions(precision="fp16"), models=("labeler",))


def test_tensorrt_backend_without_tensorrt_says_how_to_install(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except Exception:
        pass
    art = make_artifacts(tmp_path / "art")
    with pytest.raises(CdulError, match=r"cdul-rt\[tensorrt\]"):
        write_triton_repository(art, tmp_path / "r", TritonOptions(backend="tensorrt"), models=("visual",))


def test_topological_sort_repairs_order_and_refuses_cycles():
    from onnx import TensorProto, helper

    from cdul_rt.export.triton import topological_sort

    f = TensorProto.FLOAT
    # c needs both outputs of the two-output Split, which is listed last
    nodes = [helper.make_node("Add", ["a", "b"], ["c"], name="add"),
             helper.make_node("Relu", ["c"], ["d"], name="relu"),
             helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0, num_outputs=2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [4])],
                              [helper.make_tensor_value_info("d", f, [2])])
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["split", "add", "relu"]
    cyc = helper.make_graph([helper.make_node("Relu", ["q"], ["p"]), helper.make_node("Relu", ["p"], ["q"])], "c",
                            [], [helper.make_tensor_value_info("p", f, [1])])
    with pytest.raises(CdulError, match="cycle"):
        topological_sort(cyc)


def test_repository_labeler_bakes_the_requested_zeta_and_lambda(tmp_path):
    """Values, not shapes: the served labeler equals the exported one run with the same zeta and lambda inputs."""
    import onnxruntime as ort

    art = make_artifacts(tmp_path / "art")
    repo = tmp_path / "repo"
    write_triton_repository(art, repo, TritonOptions(max_images=8, opt_images=2, kind="KIND_CPU", zeta=0.2, lam=0.5),
                            log=lambda _: None)
    crops = np.random.default_rng(5).normal(size=(6 * CPI, 3, S, S)).astype(np.float32)
    text = np.load(art / "text_embeddings" / "voc.npy")
    exported = ort.InferenceSession(str(art / "labeler.onnx"), providers=["CPUExecutionProvider"])

    def reference(zeta: float, lam: float) -> list[np.ndarray]:
        return exported.run(None, {"crops": crops, "text_embeddings": text,
                                   "zeta": np.array([zeta], np.float32), "lambda": np.array([lam], np.float32)})

    served = ort.InferenceSession(str(repo / "labeler" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    out = served.run(None, {"crops": crops.reshape(6, CPI, 3, S, S)})
    want, swapped = reference(0.2, 0.5), reference(0.5, 0.2)
    spread = float(np.ptp(want[0]))
    for a, b in zip(want, out):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert np.abs(swapped[0] - want[0]).max() > 0.01 * spread  # zeta/lambda swapped would be caught above


def test_tensorrt_repository_profiles_agree_with_the_configs(tmp_path, monkeypatch):
    """Issue 14 item 5: every batch Triton may form (1 row .. max_batch_size, the preferred sizes) lies inside the
    optimization profile the engine was built with, for every model, checked against the configs as written."""
    pytest.importorskip("onnx")
    from test_trt_build_flow import FP16_INFO

    from cdul_rt.engines.trt import builder, cuda

    built = {}

    def fake_build(onnx_path, shapes, opts, log=print):
        built[onnx_path.stem] = shapes
        return b"plan" * 64, None

    monkeypatch.setattr(builder, "import_tensorrt", lambda: type("T", (), {"__version__": "10.3.0"}))
    monkeypatch.setattr(builder, "build_serialized", fake_build)
    monkeypatch.setattr(builder, "deserialize", lambda plan, verbose=False: (object(), object()))
    monkeypatch.setattr(builder, "engine_information", lambda engine, shapes: FP16_INFO)
    monkeypatch.setattr(cuda, "device_info", lambda i=0: cuda.DeviceInfo(i, "FakeGPU", "8.6", 1 << 34))
    monkeypatch.setattr(cuda, "set_device", lambda i: None)
    repo = tmp_path / "repo"
    write_triton_repository(make_artifacts(tmp_path / "art"), repo,
                            TritonOptions(backend="tensorrt", max_images=16, opt_images=4), log=lambda m: None)
    assert set(built) == {"labeler", "visual"}
    for name, shapes in built.items():
        cfg = parse_config((repo / name / "config.pbtxt").read_text())
        assert (repo / name / "1" / "model.plan").is_file()
        for t in cfg["input"]:
            lo, _, hi = shapes[t["name"]]
            assert list(lo[1:]) == list(hi[1:]) == t["dims"]
            for rows in {1, cfg["max_batch_size"], *cfg["dynamic_batching"]["preferred_batch_size"]}:
                assert lo[0] <= rows <= hi[0], (name, rows, lo, hi)
    assert built["visual"]["crops"][0][0] == 1  # a request of a single crop finds the profile


def test_a_profile_in_whole_images_does_not_fit_triton_visual_batching(tmp_path):
    """The check itself: the labeler-style profile (min one image = 10 crops) is refused for Triton's visual."""
    from cdul_rt.engines.trt.profiles import ProfileSpec, profile_shapes
    from cdul_rt.export.triton import batching, check_profile_fits_config, model_config

    opts = TritonOptions(max_images=16, opt_images=4)
    model = visual_graph()
    max_batch, preferred = batching("visual", opts, CPI)
    cfg = model_config("visual", model, "tensorrt", max_batch, preferred)
    whole_images = profile_shapes("visual", {"crops": (None, 3, S, S)}, ProfileSpec(1, 4, 16), GRID)
    with pytest.raises(CdulError, match=r"batches of \[1\] rows of 'crops', outside the engine profile \(10 to 160\)"):
        check_profile_fits_config(cfg, whole_images)
    single = profile_shapes("visual_crops", {"crops": (None, 3, S, S)}, ProfileSpec(1, 4, 16), GRID)
    check_profile_fits_config(cfg, single)
