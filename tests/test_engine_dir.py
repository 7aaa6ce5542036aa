"""A self-describing artifact folder (issue 14 item 1): ``label --engine-dir DIR`` takes the model, grid, mode, zeta,
lambda and precision from the manifest, checks the options given explicitly, and ``export`` prints that short
command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.artifacts.folder import folder_options, label_options_from_folder  # noqa: E402
from cdul_rt.export.clip import ExportOptions, export_clip  # noqa: E402
from cdul_rt.artifacts.manifest import read_manifest  # noqa: E402
from cdul_rt.labelfile import read_label_file  # noqa: E402

from conftest import BLOCK_TORCH, make_images  # noqa: E402

@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_config) -> Path:
    """Exported with non-default grid, zeta (default 0.3) and lambda (default 1), so a run that ignored the
    manifest would differ."""
    out = tmp_path_factory.mktemp("selfdesc") / "g2"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc", grid=2,
                              zeta=0.15, lam=0.5), log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("selfdesc-images") / "images"
    make_images(path, 5)
    return path


def test_engine_dir_alone_labels_without_torch_like_the_torch_runtime(tmp_path, folder, images, tiny_config):
    args = ["label", str(images), "--runtime", "onnxruntime", "--engine-dir", str(folder),  # no --classes either
            "--save-parts", "--out", str(tmp_path / "ort.npz"), "-q", "-j", "0"]
    script = tmp_path / "run.py"
    script.write_text(BLOCK_TORCH.format(args=args))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = CliRunner().invoke(main, ["label", str(images), "--runtime", "torch", "--model", str(tiny_config),
                                  "--pretrained", "none", "--classes", "voc", "--grid", "2", "--zeta", "0.15",
                                  "--lam", "0.5", "--save-parts", "--out", str(tmp_path / "torch.npz"), "-q", "-j",
                                  "0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    # the reference is torch (issue 14: "equal to torch"), not the default rule's onnxruntime
    assert json.loads((tmp_path / "torch.npz.meta.json").read_text())["config"]["runtime"] == "torch"
    a, b = read_label_file(tmp_path / "torch.npz"), read_label_file(tmp_path / "ort.npz")
    assert a.paths == b.paths and len(a.paths) == 5
    spread = float(a.scores.max() - a.scores.min())
    assert spread > 1e-3  # the comparison below means something
    assert np.abs(a.scores - b.scores).max() <= 1e-4
    for part in ("global", "aggregate"):
        assert np.abs(a.parts[part] - b.parts[part]).max() <= 1e-4
    config = json.loads((tmp_path / "ort.npz.meta.json").read_text())["config"]  # the folder's options, recorded
    assert (config["grid"], config["zeta"], config["lambda"], config["runtime"]) == (2, 0.15, 0.5, "onnxruntime")
    assert config["classes"] == a.classes and len(a.classes) == 20  # the exported vocabulary (voc), not coco


@pytest.mark.parametrize("option, value, message", [
    ("--grid", "3", "holds 2 graphs for --grid, not 3"),
    ("--mode", "max", "holds cdul graphs for --mode, not max"),
    ("--model", "ViT-B-32", "not ViT-B-32"),
    ("--precision", "fp16", "holds fp32 graphs for --precision, not fp16"),
])
def test_explicit_options_are_still_checked_against_the_folder(tmp_path, folder, images, option, value, message):
    r = CliRunner().invoke(main, ["label", str(images), "--runtime", "onnxruntime", "--engine-dir", str(folder),
                                  option, value, "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
    assert r.exit_code == 2 and message in r.output, r.output


def test_matching_explicit_options_are_accepted(tmp_path, folder, images, tiny_config):
    r = CliRunner().invoke(main, ["label", str(images), "--runtime", "onnxruntime", "--engine-dir", str(folder),
                                  "--model", str(tiny_config), "--grid", "2", "--classes", "voc",
                                  "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
    assert r.exit_code == 0, r.output


def test_folder_options_fill_only_what_was_not_given(folder):
    m = read_manifest(folder)
    got = folder_options(m, given=set())
    assert got == {"model": "tiny-test-clip", "pretrained": None, "weights": None, "grid": 2, "mode": "cdul",
                   "zeta": 0.15, "lam": 0.5, "precision": "fp32", "classes": "voc", "template": "a photo of the {}"}
    assert folder_options(m, given={"grid", "model", "weights", "classes", "template"}) == {
        "pretrained": None, "mode": "cdul", "zeta": 0.15, "lam": 0.5, "precision": "fp32"}


@pytest.mark.parametrize("vocabulary, expected", [
    ({"name": "voc", "classes": ["x"], "prompts": ["x"]}, "x,"),  # named voc but not voc's classes: listed
    ({"name": "custom", "classes": ["cat", "dog"], "prompts": ["cat", "small dog"]}, "cat,dog=small dog"),
    ({"name": "custom", "classes": ["a,b", "c"], "prompts": ["a,b", "c"]}, None),  # a comma cannot be listed
])
def test_the_folder_vocabulary_becomes_a_classes_option_that_loads_it(vocabulary, expected):
    from cdul_rt.artifacts.folder import vocabulary_option
    from cdul_rt.vocab import load_vocabulary

    spec = vocabulary_option(vocabulary)
    assert spec == expected
    if spec is not None:
        vocab = load_vocabulary(spec)
        assert list(vocab.classes) == vocabulary["classes"] and list(vocab.prompt_names) == vocabulary["prompts"]


@pytest.mark.parametrize("runtime, filled", [("onnxruntime", True), ("tensorrt", True), ("torch", False)])
def test_only_folder_runtimes_read_the_manifest(folder, runtime, filled):
    opts = {"engine_dir": str(folder), "runtime": runtime, "model": "ViT-B-32", "grid": 3, "precision": None}
    out = label_options_from_folder(opts, given=set())
    assert (out["grid"] == 2 and out["model"] == "tiny-test-clip") is filled
    assert (out == opts) is not filled


def test_export_prints_the_short_label_command(tmp_path, tiny_config):
    out = tmp_path / "art"
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
                                  "--grid", "2", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    line = next(ln.strip() for ln in r.output.splitlines() if ln.strip().startswith("cdul-rt label"))
    assert line == f"cdul-rt label IMAGES --runtime onnxruntime --engine-dir {out}"


def test_tensorrt_runtime_takes_the_folder_options_too(tmp_path, folder, images, monkeypatch):
    """`--runtime tensorrt --engine-dir DIR` with no model options: the engine is built from the folder's labeler
    (grid 2, so 5 crops per image) and the runner gets the folder's zeta and lambda; TensorRT's build and the CUDA
    device query are replaced (fp32: no fp16 check, so no inspector is needed)."""
    import shutil

    from cdul_rt.engines.trt import builder, cuda
    from cdul_rt.pipeline import open_session as open_labeler
    from cdul_rt.pipeline import LabelConfig
    from cdul_rt.vocab import load_vocabulary

    art = tmp_path / "art"
    shutil.copytree(folder, art)
    builds = []
    monkeypatch.setattr(builder, "import_tensorrt", lambda: type("T", (), {"__version__": "10.3.0"}))
    monkeypatch.setattr(builder, "build_serialized",
                        lambda onnx_path, shapes, opts, log=print: builds.append((onnx_path.name, shapes)) or
                        (b"plan" * 64, None))
    monkeypatch.setattr(cuda, "device_info", lambda i=0: cuda.DeviceInfo(i, "FakeGPU", "8.6", 1 << 34))
    monkeypatch.setattr(cuda, "set_device", lambda i: None)
    opts = label_options_from_folder({"engine_dir": str(art), "runtime": "tensorrt", "device": "cuda",
                                      "precision": None}, given={"device"})
    assert opts["classes"] == "voc"  # the exported vocabulary
    cfg = LabelConfig(input=images, out=tmp_path / "o.jsonl", **opts)
    session = open_labeler(cfg, load_vocabulary("voc"))
    assert [name for name, _ in builds] == ["labeler.onnx"] and builds[0][1]["crops"][0][0] == 5
    runner = session.runner
    assert (runner.crops_per_image, runner.zeta, runner.lam) == (5, 0.15, 0.5) and session.precision == "fp32"
    assert runner.plan_path.name.startswith("labeler.fp32.fakegpu.sm86.")
