"""Issue 11 item 1: the TensorRT engine is found or built by the pipeline's prepare step, not by the runtime.

The TensorRT runtime alone opens only an engine that exists for the request and otherwise names the command that
builds it; ``open_session`` (label, Labeler.open, serve, Ray) builds it once and reuses it. TensorRT's build and the
CUDA device query are replaced (fp32: no fp16 check, so no inspector is needed); the build decisions, the engine
cache and its keys are the real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cdul_rt.errors import CdulError
from cdul_rt.export.clip import ExportOptions, export_clip
from cdul_rt.pipeline import LabelConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("trtprep") / "art"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc", grid=2),
                log=lambda m: None)
    return out


@pytest.fixture
def art(tmp_path, exported) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "art"))


@pytest.fixture
def builds(monkeypatch) -> list:
    """TensorRT 10.3 on a fake GPU; every engine build is recorded (the ONNX file name) and yields a fake plan."""
    from cdul_rt.engines.trt import builder, cuda

    made: list = []
    monkeypatch.setattr(builder, "import_tensorrt", lambda: type("T", (), {"__version__": "10.3.0"}))
    monkeypatch.setattr(builder, "build_serialized",
                        lambda onnx_path, shapes, opts, log=print: made.append(onnx_path.name) or (b"plan" * 64, None))
    monkeypatch.setattr(cuda, "device_info", lambda i=0: cuda.DeviceInfo(i, "FakeGPU", "8.6", 1 << 34))
    monkeypatch.setattr(cuda, "set_device", lambda i: None)
    return made


def _cfg(tmp_path: Path, art: Path, tiny_config, **kw) -> LabelConfig:
    opts = {"model": str(tiny_config), "pretrained": "none", "classes": "voc", "grid": 2, "runtime": "tensorrt",
            "device": "cuda", "precision": "fp32", "engine_dir": str(art), **kw}
    return LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", workers=0, progress=False, **opts)


def _plans(art: Path) -> list[str]:
    return sorted(p.name for p in (art / "tensorrt").glob("*.plan")) if (art / "tensorrt").is_dir() else []


def test_the_runtime_alone_builds_nothing_and_names_the_command(tmp_path, art, builds, tiny_config):
    from cdul_rt.engines.trt import open_labeler
    from cdul_rt.vocab import load_vocabulary

    with pytest.raises(CdulError) as exc:
        open_labeler(_cfg(tmp_path, art, tiny_config), load_vocabulary("voc"))
    assert builds == [] and _plans(art) == []
    msg = str(exc.value)
    assert f"cdul-rt label IMAGES --runtime tensorrt --engine-dir {art} --device cuda --precision fp32" in msg
    assert "open_session" in msg and "does not build" in msg


def test_prepare_builds_once_then_the_runtime_opens_what_exists(tmp_path, art, builds, tiny_config, capsys):
    from cdul_rt.engines.trt import open_labeler
    from cdul_rt.pipeline import open_session
    from cdul_rt.vocab import load_vocabulary

    cfg, vocab = _cfg(tmp_path, art, tiny_config), load_vocabulary("voc")
    first = open_session(cfg, vocab)
    assert builds == ["labeler.onnx"] and len(_plans(art)) == 1
    assert "building from labeler.onnx" in capsys.readouterr().out
    again = open_session(cfg, vocab)  # the prepare step finds the engine: no second build
    alone = open_labeler(cfg, vocab)  # the runtime alone now opens it too
    assert builds == ["labeler.onnx"] and "up to date" in capsys.readouterr().out
    plan = art / "tensorrt" / _plans(art)[0]
    assert first.runner.plan_path == again.runner.plan_path == alone.runner.plan_path == plan


def test_a_stale_engine_is_refused_by_the_runtime_with_the_reason_and_rebuilt_by_prepare(tmp_path, art, builds,
                                                                                       tiny_config):
    from cdul_rt.engines.trt import open_labeler
    from cdul_rt.pipeline import open_session
    from cdul_rt.vocab import load_vocabulary

    vocab = load_vocabulary("voc")
    open_session(_cfg(tmp_path, art, tiny_config), vocab)
    bigger = _cfg(tmp_path, art, tiny_config, trt_workspace=0.5, trt_typing="strong")
    with pytest.raises(CdulError, match="--trt-workspace 0.5 --trt-typing strong`") as exc:
        open_labeler(bigger, vocab)
    assert "(typing none -> strong; workspace bytes 4294967296 -> 536870912)" in str(exc.value)
    assert builds == ["labeler.onnx"]
    open_session(bigger, vocab)
    assert builds == ["labeler.onnx"] * 2
    open_labeler(bigger, vocab)


def test_prepare_refuses_a_mismatched_or_damaged_folder_before_building(tmp_path, art, builds, tiny_config):
    from cdul_rt.prepare import prepare_request

    with pytest.raises(CdulError, match="--grid"):
        prepare_request(_cfg(tmp_path, art, tiny_config, grid=3))
    with open(art / "text.onnx", "ab") as f:  # not the graph the build reads, but part of what the runtime opens
        f.write(b"\0")
    with pytest.raises(CdulError, match="text.onnx is larger than exported"):
        prepare_request(_cfg(tmp_path, art, tiny_config))
    assert builds == [] and _plans(art) == []
