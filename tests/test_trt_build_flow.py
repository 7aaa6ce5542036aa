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
from cdul_rt.engines.trt.build import TrtBuildConfig, build_engines

FP16_INFO = json.dumps({"Layers": [{"Name": "mm", "LayerType": "CaskGemmMatrixMultiply",
                                    "Inputs": [{"Format/Datatype": "Half"}],
                                    "Outputs": [{"Format/Datatype": "Half"}]}]})
FP32_INFO = FP16_INFO.replace("Half", "Float")


@pytest.fixture
def native(monkeypatch):
    state = {"version": "10.3.0", "cc": "8.6", "info": FP16_INFO, "builds": []}

    def fake_build(onnx_path, shapes, opts, log=print):
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
    assert first[0].plan.name == "labeler.fp16.fakegpu.sm86.trt10.3.0.plan"
    meta = json.loads((art / "tensorrt" / "labeler.fp16.fakegpu.sm86.trt10.3.0.json").read_text())
    assert meta["key"]["tensorrt_version"] == "10.3.0" and meta["key"]["compute_capability"] == "8.6"
    assert meta["key"]["gpu"] == "FakeGPU" and meta["key"]["workspace_bytes"] == 4 << 30

    again = build_engines(art, kinds=("labeler",), cfg=cfg, log=logs.append)
    assert not again[0].rebuilt and len(native["builds"]) == 2 and "up to date" in logs[-2]

    # the workspace and the optimisation level are part of the key: same file, rebuilt with the reason
    bigger = build_engines(art, kinds=("labeler",), cfg=TrtBuildConfig(**{**cfg.__dict__, "workspace_gib": 8.0}),
                           log=logs.append)
    assert bigger[0].rebuilt and "workspace bytes 4294967296 -> 8589934592" in bigger[0].reason
    level = build_engines(art, kinds=("labeler",), log=logs.append,
                          cfg=TrtBuildConfig(**{**cfg.__dict__, "workspace_gib": 8.0, "builder_optimization_level": 5}))
    assert level[0].rebuilt and "builder optimization level None -> 5" in level[0].reason

    native["cc"] = "9.0"  # another GPU sharing the folder: its own plan, the first one stays
    moved = build_engines(art, kinds=("labeler",), cfg=cfg, log=logs.append)
    assert moved[0].rebuilt and moved[0].plan.name == "labeler.fp16.fakegpu.sm90.trt10.3.0.plan"
    assert "the folder has fakegpu.sm86.trt10.3.0" in moved[0].reason
    assert (art / "tensorrt" / "labeler.fp16.fakegpu.sm86.trt10.3.0.plan").is_file()

    native["version"] = "10.5.0"
    upgraded = build_engines(art, kinds=("labeler",), cfg=cfg, log=logs.append)
    assert upgraded[0].plan.name == "labeler.fp16.fakegpu.sm90.trt10.5.0.plan"
    assert logs[-1].startswith("next: cdul-rt label")
    # timing caches are per device too (a cache from another GPU would be refused and rewritten)
    assert all(p.name.startswith("timing.fakegpu.") for p in (art / "tensorrt").glob("timing*"))


def test_concurrent_writers_use_unique_temporaries(tmp_path, monkeypatch):
    """Two builders storing the same plan never share a temporary file (each mkstemp name is unique)."""
    import tempfile

    from cdul_rt import fileio as cache_mod

    names = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        names.append(name)
        return fd, name

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", spy)
    for data in (b"a" * 10, b"b" * 10):
        cache_mod.atomic_write(tmp_path / "x.plan", data)
    assert len(set(names)) == 2 and all(n.endswith(".partial") for n in names)
    assert (tmp_path / "x.plan").read_bytes() == b"b" * 10 and list(tmp_path.iterdir()) == [tmp_path / "x.plan"]


def test_an_fp32_engine_for_an_fp16_request_is_refused_and_not_saved(native, tmp_path):
    art = make_artifacts(tmp_path / "art")
    native["info"] = FP32_INFO
    with pytest.raises(CdulError, match="asked for fp16 but is not fp16"):
        build_engines(art, kinds=("labeler",), cfg=TrtBuildConfig(precision="fp16"), log=lambda m: None)
    assert not list((art / "tensorrt").glob("labeler.fp16.*plan"))
    # fp32 engines are not checked for fp16
    built = build_engines(art, kinds=("labeler",), cfg=TrtBuildConfig(precision="fp32"), log=lambda m: None)
    assert built[0].plan.name.startswith("labeler.fp32.") and built[0].precision_check is None


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
        BuilderFlag=types.SimpleNamespace(FP16="FP16", TF32="TF32"))
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
    (set_cache,) = [args for path, args in calls if path == "config.set_timing_cache"]
    assert set_cache[1] is False  # ignore_mismatch=False: a cache from another device is refused, not used
    assert ("config.clear_flag", ("TF32",)) not in calls  # fp16 builds keep TensorRT's default


def test_fp32_builds_disable_tf32(tmp_path, monkeypatch):
    calls: list = []
    network = types.SimpleNamespace(num_inputs=0, num_layers=0, get_input=lambda i: None)
    config = _Recorder(calls, "config", {"get_timing_cache": lambda: None})
    b = _Recorder(calls, "builder", {"create_network": lambda f: network, "create_builder_config": lambda: config,
                                     "build_serialized_network": lambda n, c: b"engine"})
    trt = types.SimpleNamespace(
        __version__="11.1.0", Logger=type("L", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda s, lvl: None}),
        Builder=lambda logger: b, OnnxParser=lambda n, logger: types.SimpleNamespace(parse_from_file=lambda p: True),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"), ProfilingVerbosity=types.SimpleNamespace(DETAILED="D"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", TF32="TF32"))
    monkeypatch.setattr(builder, "import_tensorrt", lambda: trt)
    builder.build_serialized(tmp_path / "g.onnx", {}, builder.BuildOptions("fp32", None, 1 << 30, None))
    assert ("config.clear_flag", ("TF32",)) in calls and not any(p == "config.set_flag" for p, _ in calls)


class _TimingConfig:
    """The two IBuilderConfig timing-cache calls: create_timing_cache(bytes) -> cache | None and
    set_timing_cache(cache, ignore_mismatch) -> bool, with what the real builder returns in each case."""

    def __init__(self, readable=True, matches=True, creatable=True):
        self.readable, self.matches, self.creatable, self.set_calls = readable, matches, creatable, []

    def create_timing_cache(self, data: bytes):
        if not self.creatable or (data and not self.readable):
            return None
        return ("cache", bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.set_calls.append((cache, ignore_mismatch))
        return ignore_mismatch or not cache[1] or self.matches


@pytest.mark.parametrize("case, expect_set, expect_log", [
    ({}, [(("cache", b"old"), False)], None),
    ({"matches": False}, [(("cache", b"old"), False), (("cache", b""), False)], "another GPU"),
    ({"readable": False}, [(("cache", b""), False)], "cannot be read"),
])
def test_timing_cache_is_checked(tmp_path, case, expect_set, expect_log):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"old")
    config, logs = _TimingConfig(**case), []
    builder._load_timing_cache(config, path, logs.append)
    assert config.set_calls == expect_set
    assert (expect_log is None and not logs) or expect_log in logs[0]


def test_timing_cache_that_cannot_be_created_is_a_clear_error(tmp_path):
    with pytest.raises(CdulError, match="create_timing_cache returned None"):
        builder._load_timing_cache(_TimingConfig(creatable=False), None, print)
