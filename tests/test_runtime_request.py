"""Issue 11 items 1-2: the artifact contract below the runtimes, the cached export made by the pipeline, and the
typed request a runtime receives (its own options wired to `label`'s flags)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cdul_rt.aggregation import Aggregation  # noqa: E402
from cdul_rt.artifacts.manifest import FileEntry, LabelerInfo, Manifest, ModelInfo, read_manifest  # noqa: E402
from cdul_rt.cli import main  # noqa: E402
from cdul_rt.engines.request import OrtOptions, RuntimeRequest, TorchOptions, TrtOptions  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.export.clip import ExportOptions, export_clip  # noqa: E402
from cdul_rt.pipeline import LabelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("request") / "art"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc", grid=2, zeta=0.15,
                              lam=0.5), log=lambda m: None)
    return out


def _cfg(tmp_path: Path, **kw) -> LabelConfig:
    return LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", classes="voc", workers=0, progress=False, **kw)


def test_engines_never_import_export():
    """Item 1: the runtimes read folders through cdul_rt.artifacts; nothing under engines/ imports export/."""
    found = []
    for path in sorted((ROOT / "cdul_rt" / "engines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.name}:{node.lineno} {m}" for m in mods if m.startswith("cdul_rt.export")]
    assert found == []


def test_manifest_sections_are_typed_and_written_back_byte_for_byte(folder):
    text = (folder / "manifest.json").read_text(encoding="utf-8")
    m = read_manifest(folder)
    assert isinstance(m.model, ModelInfo) and isinstance(m.labeler, LabelerInfo)
    assert all(isinstance(e, FileEntry) for e in m.files.values())
    assert m.labeler.aggregation == Aggregation("cdul", 0.15, 0.5) and m.labeler.grid == 2
    assert m.model.request.pretrained == "none" and m.files["labeler.onnx"].role == "labeler"
    assert Manifest.from_json(text).to_json() == text  # same keys, same order, same values
    # the schema-1 dict view: JSON keys, the aggregation flat
    assert m.labeler["lambda"] == 0.5 and {**m.labeler}["mode"] == "cdul" and m.files["labeler.onnx"]["bytes"] > 0


def test_label_config_gives_each_runtime_its_own_typed_options(tmp_path):
    torch_req = _cfg(tmp_path, model="cdul-tiny", runtime="torch", compile=True).runtime_request()
    assert torch_req.options == TorchOptions(compile=True) and torch_req.model.name == "cdul-tiny"
    assert torch_req.aggregation == Aggregation() and torch_req.crops_per_image == 10
    ort = _cfg(tmp_path, model="cdul-tiny", runtime="onnxruntime", compile=True).runtime_request()
    assert ort.options == OrtOptions(tensorrt_ep=False)  # --compile stays ignored by the graph runtimes
    trt = _cfg(tmp_path, model="cdul-tiny", runtime="tensorrt", device="cuda", trt_workspace=2.0, trt_typing="strong",
               trt_chunk_images=3).runtime_request()
    assert trt.options == TrtOptions(workspace_gib=2.0, typing="strong", chunk_images=3)
    with pytest.raises(CdulError, match="takes TrtOptions"):
        RuntimeRequest("tensorrt", trt.model, "fp16", "cuda", None, 3, Aggregation(), "{}", 8, TorchOptions())


@pytest.mark.parametrize("kw, message", [
    ({"runtime": "torch", "trt_workspace": 2.0}, "--trt-workspace configure the native TensorRT runtime"),
    ({"runtime": "onnxruntime", "trt_chunk_images": 4}, "--trt-chunk-images configure"),
    ({"runtime": "tensorrt", "device": "cuda", "trt_workspace": 0.0}, "--trt-workspace must be a number of GiB > 0"),
    ({"runtime": "tensorrt", "device": "cuda", "trt_typing": "weak"}, "--trt-typing must be one of flag, strong"),
    ({"runtime": "torch", "ort_tensorrt": True}, "--ort-tensorrt is onnxruntime's TensorRT execution provider"),
])
def test_runtime_options_of_another_runtime_are_refused(tmp_path, kw, message):
    with pytest.raises(CdulError, match=message):
        _cfg(tmp_path, model="cdul-tiny", **kw).check_options()


def test_label_trt_flags_are_refused_without_the_tensorrt_runtime(tmp_path, image_folder, tiny_config):
    r = CliRunner().invoke(main, ["label", str(image_folder), "--model", str(tiny_config), "--pretrained", "none",
                                  "--runtime", "torch", "--trt-typing", "strong", "--out", str(tmp_path / "x.jsonl"),
                                  "-q", "-j", "0"])
    assert r.exit_code != 0 and "--trt-typing configure the native TensorRT runtime" in r.output, r.output
    assert not (tmp_path / "x.jsonl").exists()


def test_label_trt_flags_are_the_servers_with_server(tmp_path, image_folder):
    r = CliRunner().invoke(main, ["label", str(image_folder), "--server", "http://127.0.0.1:9", "--trt-workspace", "2",
                                  "--out", str(tmp_path / "x.jsonl"), "-q"])
    assert r.exit_code != 0 and "--trt-workspace: with --server the server decides these" in r.output, r.output


def test_the_pipeline_makes_the_cached_export_and_the_runtime_only_opens_it(tmp_path, tiny_config, monkeypatch):
    """The onnxruntime runtime given no folder refuses (it never exports); open_session's prepare step exports
    into the cache once and hands the runtime that folder; the label options keep engine_dir unset."""
    from cdul_rt.engines.onnxrt import open_labeler
    from cdul_rt.pipeline import open_session
    from cdul_rt.prepare import prepare_request
    from cdul_rt.vocab import load_vocabulary

    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, model=str(tiny_config), pretrained="none", grid=2, runtime="onnxruntime")
    with pytest.raises(CdulError, match="runs an exported artifact folder and none was given"):
        open_labeler(cfg, load_vocabulary("voc"))
    assert not (tmp_path / "cache" / "engines").exists() or not any((tmp_path / "cache" / "engines").iterdir())
    session = open_session(cfg, load_vocabulary("voc"))
    request = prepare_request(cfg)  # the second time: the cached folder, not another export
    assert request.engine_dir.parent == tmp_path / "cache" / "engines" and cfg.engine_dir is None
    assert read_manifest(request.engine_dir).labeler.grid == 2 and session.runtime == "onnxruntime"


def test_missing_tensorrt_is_refused_before_any_export(tmp_path, tiny_config, monkeypatch):
    import builtins

    from cdul_rt.prepare import prepare_request

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, model=str(tiny_config), pretrained="none", runtime="tensorrt", device="cuda")
    with pytest.raises(CdulError, match="cdul-rt\\[tensorrt"):
        prepare_request(cfg)
    assert not (tmp_path / "cache" / "engines").exists() or not any((tmp_path / "cache" / "engines").iterdir())


def test_trt_options_reach_the_engine_build_and_the_runner(tmp_path, folder, monkeypatch):
    """--trt-workspace / --trt-typing / --trt-chunk-images (TensorRT's build and CUDA device query replaced)."""
    from cdul_rt.engines.trt import builder, cuda
    from cdul_rt.pipeline import open_session
    from cdul_rt.vocab import load_vocabulary

    art = tmp_path / "art"
    shutil.copytree(folder, art)
    builds = []
    monkeypatch.setattr(builder, "import_tensorrt", lambda: type("T", (), {"__version__": "10.3.0"}))
    monkeypatch.setattr(builder, "build_serialized",
                        lambda onnx_path, shapes, opts, log=print: builds.append(opts) or (b"plan" * 64, None))
    monkeypatch.setattr(cuda, "device_info", lambda i=0: cuda.DeviceInfo(i, "FakeGPU", "8.6", 1 << 34))
    monkeypatch.setattr(cuda, "set_device", lambda i: None)
    cfg = _cfg(tmp_path, model=read_manifest(art).model.arch, runtime="tensorrt", device="cuda", precision="fp32",
               engine_dir=str(art), grid=2, trt_workspace=0.5, trt_chunk_images=3)
    session = open_session(cfg, load_vocabulary("voc"))
    (opts,) = builds
    assert opts.workspace_bytes == 1 << 29 and opts.precision == "fp32"
    assert session.runner.chunk_items == 3 and session.runtime == "tensorrt"
