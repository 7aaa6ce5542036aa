"""The build orchestration of ``build_engines`` without TensorRT: cache hit, rebuild with a reason when TensorRT or
the GPU changes, the fp16 check refusing an fp32 engine (nothing saved), and the builder's use of the TensorRT API
(network flags per version, FP16 flag, workspace, profiles on dynamic inputs only, timing cache) recorded on a
stand-in. The stand-ins replace only the native calls; graph choice, keys, cache and checks are the real code."""

from __future__ import annotations

import json
import types

import pytest
from test_triton_repository import make_artifacts

from cdul_rt.engines.trt import builder, cuda
from cdul_rt.engines.trt.profiles import ProfileSpec
from cdul_rt.errors import CdulError
from cdul_rt.export.tensorrt import TrtBuildConfig, build_engines

FP16_INFO = json.dumps({"Layers": [{"Name": "mm", "LayerType": "CaskGemmMatrixMultiply",
                                    "Inputs": [{"Format/Datatype": "Half"}],
                                    "Outputs": [{"Format/Datatype": "Half"}]}]})
FP32_INFO = FP16_INFO.replace("Half", "Float")


@pytest.fixture
def native(monkeypatch):
    state = {"version": "10.3.0", "cc": "8.6", "info": FP16_INFO, "builds": []}

    def fake_build(onnx_path, shapes, opts):
        state["builds"].append((onnx_path.name, opts.typing, shapes))
        return f"plan:{onnx_path.name}:{opts.typing}:{state['version']}".encode() * 100, None

    monkeypatch.setattr(builder, "import_tensorrt", lambda: types.SimpleNamespace(__version__=state["version"]))
    monkeypatch.setattr(builder, "build_serialized", fake_build)
    monkeypatch.setattr(builder, "deserialize", lambda plan, verbose=False: (object(), object()))
    monkeypatch.setattr(builder, "engine_information", lambda engine, shapes: state["info"])
    monkeypatch.setattr(cuda, "device_info", lambda i=0: cuda.DeviceInfo(i, "FakeGPU", state["cc"], 1 << 34))
    monkeypatch.setattr(cuda, "set_device", lambda i: None)
    return state


def test_build_reuse_and_rebuild_with_reasons(native, tmp_path):
    art = make_artifacts(tmp_path / "art")
    logs: list[str] = []
    cfg = TrtBuildConfig(precision="fp16", profile=ProfileSpec(1, 4, 8, 1, 5, 64))
    first = build_engines(art, kinds=("labeler", "visual"), cfg=cfg, log=logs.append)
    assert [(b.kind, b.rebuilt) for b in first] == [("labeler", True), ("visual", True)]
    assert all("layers" in b.precision_check for b in first)
    name, typing, shapes = native["builds"][0]
    assert name == "labeler.onnx" and typing == "flag"  # TRT 10, fp32 graph + BuilderFlag.FP16
    assert shapes["crops"][2] == (80, 3, 8, 8)
    meta = json.loads((art / "tensorrt" / "labeler.fp16.json").read_text())
    assert meta["key"]["tensorrt_version"] == "10.3.0" and meta["key"]["compute_capability"] == "8.6"

    again = build_engines(art, kinds=("labeler",), cfg=cfg, log=logs.append)
    assert not again[0].rebuilt and len(native["builds"]) == 2 and "up to date" in logs[-2]

    native["cc"] = "9.0"  # the folder moved to another GPU
    moved = build_engines(art, kinds=("labeler",), cfg=cfg, log=logs.append)
    assert moved[0].rebuilt and "compute capability 8.6 -> 9.0" in moved[0].reason
    assert any("rebuilding (compute capability 8.6 -> 9.0)" in line for line in logs)

    native["version"] = "10.5.0"
    upgraded = build_engines(art, kinds=("labeler",), cfg=cfg, log=logs.append)
    assert "tensorrt version 10.3.0 -> 10.5.0" in upgraded[0].reason
    assert logs[-1].startswith("next: cdul-rt label")


def test_an_fp32_engine_for_an_fp16_request_is_refused_and_not_saved(native, tmp_path):
    art = make_artifacts(tmp_path / "art")
    native["info"] = FP32_INFO
    with pytest.raises(CdulError, match="asked for fp16 but is not fp16"):
        build_engines(art, kinds=("labeler",), cfg=TrtBuildConfig(precision="fp16"), log=lambda m: None)
    assert not (art / "tensorrt" / "labeler.fp16.plan").exists()
    # fp32 engines are not checked for fp16
    built = build_engines(art, kinds=("labeler",), cfg=TrtBuildConfig(precision="fp32"), log=lambda m: None)
    assert built[0].plan.name == "labeler.fp32.plan" and built[0].precision_check is None


def test_tensorrt_11_needs_the_fp16_graph(native, tmp_path):
    art = make_artifacts(tmp_path / "art")
    native["version"] = "11.2.0"
    with pytest.raises(CdulError, match="export the fp16 graphs first"):
        build_engines(art, kinds=("labeler",), cfg=TrtBuildConfig(precision="fp16"), log=lambda m: None)


class _Recorder:
    """Records every call made on it (and on what it returns) as (path, args)."""

    def __init__(self, log, path="trt", returns=None):
        self._log, self._path, self._returns = log, path, returns or {}

    def __getattr__(self, name):
        path = f"{self._path}.{name}"
        if name in self._returns and not callable(self._returns[name]):
            return self._returns[name]

        def call(*args, **kwargs):
            self._log.append((path, args))
            ret = self._returns.get(name)
            return ret(*args) if callable(ret) else _Recorder(self._log, path + "()", self._returns)

        return call


@pytest.mark.parametrize("version,typing,flags,fp16_flag", [("10.3.0", "flag", 0, True),
                                                            ("10.3.0", "strong", 1 << 3, False),
                                                            ("11.1.0", "strong", 0, False)])
def test_builder_api_use(tmp_path, monkeypatch, version, typing, flags, fp16_flag):
    calls: list = []

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    network = types.SimpleNamespace(num_inputs=2, num_layers=0,
                                    get_input=lambda i: [Tensor("crops", (-1, 3, 8, 8)), Tensor("zeta", (1,))][i])
    parser = types.SimpleNamespace(parse_from_file=lambda p: True, num_errors=0)
    timing = types.SimpleNamespace(serialize=lambda: b"timing-bytes")
    config = _Recorder(calls, "config", {"get_timing_cache": lambda: timing})
    b = _Recorder(calls, "builder", {"create_network": lambda f: calls.append(("flags", f)) or network,
                                     "create_builder_config": lambda: config,
                                     "build_serialized_network": lambda n, c: b"engine"})
    trt = types.SimpleNamespace(
        __version__=version, Logger=type("L", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda s, lvl: None}),
        Builder=lambda logger: b, OnnxParser=lambda n, logger: parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=3),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"), ProfilingVerbosity=types.SimpleNamespace(DETAILED="D"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16"))
    monkeypatch.setattr(builder, "import_tensorrt", lambda: trt)
    shapes = {"crops": ((10, 3, 8, 8), (40, 3, 8, 8), (80, 3, 8, 8)), "zeta": ((1,), (1,), (1,))}
    cache = tmp_path / "timing.cache"
    opts = builder.BuildOptions("fp16", typing, 1 << 30, cache)
    plan, typed = builder.build_serialized(tmp_path / "g.onnx", shapes, opts)
    assert plan == b"engine" and cache.read_bytes() == b"timing-bytes"
    assert ("flags", flags) in calls
    assert (("config.set_flag", ("FP16",)) in calls) == fp16_flag
    assert ("config.set_memory_pool_limit", ("WS", 1 << 30)) in calls
    profile_calls = [c for c in calls if c[0].endswith("set_shape")]
    assert profile_calls == [("builder.create_optimization_profile().set_shape", ("crops", *shapes["crops"]))]
    assert ("config.create_timing_cache", (b"",)) in calls and typed == ([] if typing == "strong" else None)
