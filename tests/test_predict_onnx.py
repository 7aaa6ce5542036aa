"""Classifier export to ONNX (fp32 + fp16): manifest, metadata, parity, and `predict --engine` without torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from click.testing import CliRunner  # noqa: E402

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.export.classifier import export_classifier, format_parity_table  # noqa: E402
from cdul_rt.labelfile import read_label_file  # noqa: E402
from conftest import train_tiny_classifier  # noqa: E402

pytestmark = pytest.mark.slow  # trains a classifier per module

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    images, run = train_tiny_classifier(root, CLASSES, "--lr", "1e-2")
    out = root / "engine"
    manifest = export_classifier(run, out, images=[images])  # a folder: its images are the verify batch
    return images, run, out, manifest


def test_manifest_metadata_and_parity(exported):
    _, _, out, manifest = exported
    assert manifest["files"] == {"fp32": "classifier.onnx", "fp16": "classifier.fp16.onnx"}
    assert manifest["model"]["classes"] == CLASSES and manifest["model"]["image_size"] == 32
    assert json.loads((out / "classifier.manifest.json").read_text())["sha256"] == manifest["sha256"]
    rows = {r["precision"]: r for r in manifest["verify"]}
    assert rows["fp32"]["ok"] and rows["fp32"]["max_abs"] < 1e-4
    assert rows["fp16"]["ok"] and rows["fp16"]["cosine"] > 0.999
    assert "classifier.fp16.onnx" in format_parity_table(manifest["verify"])
    for name, precision in (("classifier.onnx", "fp32"), ("classifier.fp16.onnx", "fp16")):
        graph = onnx.load(str(out / name))
        props = {p.key: p.value for p in graph.metadata_props}
        assert props["cdul_rt.kind"] == "classifier" and props["cdul_rt.precision"] == precision
        assert json.loads(props["cdul_rt.classes"]) == CLASSES
        elem = graph.graph.input[0].type.tensor_type.elem_type
        assert elem == (onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT)
        assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_predict_with_engine_matches_torch(exported, tmp_path):
    images, run, out, _ = exported
    results = {}
    for name, args in (("torch", ["--run", str(run)]), ("onnx", ["--engine", str(out)]),
                       ("onnx16", ["--engine", str(out), "--precision", "fp16"])):
        path = tmp_path / f"{name}.jsonl"
        result = CliRunner().invoke(main, ["predict", str(images), *args, "--out", str(path), "-q", "--threads", "1"])
        assert result.exit_code == 0, result.output
        results[name] = read_label_file(path)
    assert results["onnx"].paths == results["torch"].paths
    np.testing.assert_allclose(results["onnx"].scores, results["torch"].scores, atol=1e-4)
    np.testing.assert_allclose(results["onnx16"].scores, results["torch"].scores, atol=2e-2)


def test_predict_engine_dir_is_self_describing(exported, tmp_path):
    """`--engine-dir` names the same folder option as `label`; the graph actually run is what the meta records."""
    from cdul_rt.labelfile import read_meta

    images, _, out, _ = exported
    for name, target, want in (("dir", out, "fp32"), ("file16", out / "classifier.fp16.onnx", "fp16")):
        path = tmp_path / f"{name}.jsonl"
        result = CliRunner().invoke(main, ["predict", str(images), "--engine-dir", str(target), "--out", str(path),
                                           "-q", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert read_meta(path)["precision"] == want


def test_engine_without_manifest_is_a_clear_error(tmp_path, exported):
    images = exported[0]
    (tmp_path / "classifier.onnx").write_bytes(b"")
    result = CliRunner().invoke(main, ["predict", str(images), "--engine", str(tmp_path / "classifier.onnx"),
                                       "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2 and "cdul-rt export --classifier" in result.output


def test_export_cli_hook(exported, tmp_path):
    _, run, _, _ = exported
    out = tmp_path / "cli-engine"
    result = CliRunner().invoke(main, ["export", "--classifier", str(run), "--out", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "classifier.manifest.json").read_text())
    assert set(manifest["files"]) == {"fp32", "fp16"} and all(r["ok"] for r in manifest["verify"])
    assert "max_abs" in result.output and f"cdul-rt predict IMAGES --engine {out}" in result.output


def test_export_classifier_triton_and_tensorrt_hooks(exported, tmp_path):
    _, run, _, _ = exported
    out, repo = tmp_path / "cls", tmp_path / "triton"
    result = CliRunner().invoke(main, ["export", "--classifier", str(run), "--out", str(out), "--triton", str(repo)])
    assert result.exit_code == 0, result.output
    config = (repo / "classifier" / "config.pbtxt").read_text()
    assert 'name: "classifier"' in config and (repo / "classifier" / "1" / "model.onnx").is_file()
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        result = CliRunner().invoke(main, ["export", "--classifier", str(run), "--out", str(out),
                                           "--engine", "tensorrt"])
        assert result.exit_code == 2 and "cdul-rt[tensorrt]" in result.output


def test_predict_from_an_exported_classifier_runs_with_torch_blocked(exported, tmp_path):
    """The torch-free promise, kept: `predict --engine` in a process where `import torch` fails."""
    import subprocess
    import sys
    import textwrap

    images, run, out, _ = exported
    blocked, ref = tmp_path / "blocked.jsonl", tmp_path / "torch.jsonl"
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from cdul_rt.cli import main
        main(["predict", {str(images)!r}, "--engine", {str(out)!r}, "--out", {str(blocked)!r}, "-q",
              "--threads", "1"])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    result = CliRunner().invoke(main, ["predict", str(images), "--run", str(run), "--out", str(ref), "-q",
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    got, want = read_label_file(blocked), read_label_file(ref)
    assert got.paths == want.paths
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
