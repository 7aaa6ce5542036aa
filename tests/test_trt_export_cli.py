"""`cdul-rt export --engine tensorrt` honours --precision (issue 14 item 4), on the TensorRT 10 and 11 paths, with the
native build replaced as in test_trt_build_flow (graph choice, typing, keys and cache are the real code)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_trt_build_flow import FP16_INFO, native  # noqa: F401 - the fixture

pytest.importorskip("onnx")

from cdul_rt.cli import main  # noqa: E402


def _export(tmp_path, tiny_config, precision):
    out = tmp_path / f"art-{precision}"
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
                                  "--precision", precision, "--engine", "tensorrt", "--out", str(out)])
    return r, out


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
@pytest.mark.parametrize("precision, onnx_name, typing", [("fp32", "labeler.onnx", None),
                                                          ("fp16", "labeler.onnx", "strong")])
def test_export_builds_the_precision_asked_for(native, tmp_path, tiny_config, version, precision, onnx_name,  # noqa: F811
                                               typing):
    native["version"] = version
    r, out = _export(tmp_path, tiny_config, precision)
    assert r.exit_code == 0, r.output
    built = {name: typ for name, typ, _ in native["builds"]}
    # every graph of the folder is built, in the precision asked for, from the graph of that precision
    assert set(built) == {"labeler.onnx", "visual.onnx", "text.onnx"} and set(built.values()) == {typing}
    plans = sorted(p.name for p in (out / "tensorrt").glob("*.plan"))
    assert len(plans) == 3 and all(p.split(".")[1] == precision for p in plans)
    meta = json.loads(next((out / "tensorrt").glob("labeler.*.json")).read_text())
    assert meta["key"]["precision"] == precision and meta["onnx_precision"] == precision
    assert "--runtime tensorrt" in r.output and "--precision" not in r.output.splitlines()[-1]


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_int8_is_refused_before_exporting(native, tmp_path, tiny_config, version):  # noqa: F811
    native["version"] = version
    r, out = _export(tmp_path, tiny_config, "int8")
    assert r.exit_code == 2 and "builds fp32 or fp16 engines" in r.output and "--precision fp16" in r.output
    assert not out.exists() and native["builds"] == []


def test_trt_options_reach_the_build(native, tmp_path, tiny_config):  # noqa: F811
    out = tmp_path / "art"
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
                                  "--precision", "fp16", "--engine", "tensorrt", "--out", str(out),
                                  "--trt-max-images", "16", "--trt-opt-images", "4", "--trt-max-classes", "200",
                                  "--trt-workspace", "2", "--trt-opt-level", "4"])
    assert r.exit_code == 0, r.output
    key = json.loads(next((out / "tensorrt").glob("labeler.*.json")).read_text())["key"]
    assert key["profile"]["crops"] == [[10, 3, 32, 32], [40, 3, 32, 32], [160, 3, 32, 32]]
    assert key["profile"]["text_embeddings"][2][0] == 200
    assert key["workspace_bytes"] == 2 << 30 and key["builder_optimization_level"] == 4
    bad = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--engine", "tensorrt",
                                    "--trt-opt-images", "64", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--trt-opt-images and --trt-max-images" in bad.output
    for workspace in ("0", "-1"):  # TensorRT would be asked for a zero or negative memory pool after the export
        bad = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--engine", "tensorrt",
                                        "--trt-workspace", workspace, "--out", str(tmp_path / "x")])
        assert bad.exit_code == 2 and "--trt-workspace" in bad.output and not (tmp_path / "x").exists()
