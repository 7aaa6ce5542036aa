"""`cdul-rt export` with a tiny random CLIP: graph contracts, manifest and metadata, fp16 / int8 parity, the CLI,
and the clear errors for damaged or mismatched artifact folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.export.clip import ExportOptions, export_clip  # noqa: E402
from cdul_rt.artifacts.manifest import Manifest, read_manifest, verify_artifacts  # noqa: E402
from cdul_rt.export.verify import failures, sample_images, verify_folder  # noqa: E402

from conftest import make_images  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bundle(tiny_config):
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    return load_clip(resolve_model(str(tiny_config), "none"))


def _export(root: Path, tiny_config: Path, bundle, precision: str) -> Path:
    out = root / precision
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc",
                              precision=precision), log=lambda m: None, bundle=bundle)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_config, tiny_bundle) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {p: _export(root, tiny_config, tiny_bundle, p) for p in ("fp32", "fp16", "int8")}


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_fp32_graph_contracts(folders):
    folder = folders["fp32"]
    m = verify_artifacts(folder)
    assert m.exporter == "torchscript" and m.opset == 17 and m.precision == "fp32"
    assert Manifest.from_json(m.to_json()) == m
    for name in ("visual.onnx", "text.onnx", "labeler.onnx"):
        model = onnx.load(str(folder / name))
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        assert any(n.op_type == "LayerNormalization" for n in model.graph.node)  # opset-17 fused LayerNorm
        meta = _meta(folder / name)
        assert meta["cdul_rt.graph"] == name
        assert json.loads(meta["cdul_rt.model"])["weights_hash"] == m.model["weights_hash"]
        assert json.loads(meta["cdul_rt.preprocess"]) == m.preprocess
        first = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value  # dynamic batch
    for name in ("visual.onnx", "text.onnx"):  # embedding width declared (Triton / TensorRT read it)
        out = onnx.load(str(folder / name)).graph.output[0].type.tensor_type.shape.dim
        assert out[1].dim_value == m.embed_dim == 32
    text = onnx.load(str(folder / "text.onnx"))
    assert text.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert any(n.op_type == "ArgMax" for n in text.graph.node)  # end-of-text pooling
    labeler = onnx.load(str(folder / "labeler.onnx"))
    assert [i.name for i in labeler.graph.input] == m.labeler["inputs"] == ["crops", "text_embeddings", "zeta",
                                                                              "lambda"]
    assert [o.name for o in labeler.graph.output] == ["S_final", "S_global", "S_ag", "image_embeddings"]
    assert labeler.graph.output[3].type.tensor_type.shape.dim[1].dim_value == m.embed_dim  # [images, D]
    assert m.vocabulary["classes"][:2] == ["aeroplane", "bicycle"] and m.labeler["crops_per_image"] == 10
    assert m.versions["torch"] and m.versions["onnxruntime"]


def test_fp32_parity_with_torch(folders, tiny_bundle):
    rows = verify_folder(folders["fp32"], tiny_bundle, sample_images(3))
    assert not failures(rows)
    got = {(r.graph, r.metric): r.value for r in rows}
    assert got[("visual.onnx", "crop cosine (min)")] >= 0.9999
    assert got[("labeler.onnx", "S_final max abs diff")] <= 1e-4
    assert got[("labeler.onnx", "image cosine (min)")] >= 0.9999
    assert got[("text.onnx", "class cosine (min)")] >= 0.9999
    assert got[("tokenizer", "tokenizer ids equal")] == 1.0


def _input_types(model) -> dict[str, int]:
    from cdul_rt.export.precision import _elem_types

    return _elem_types(model)


def test_fp16_graph_keeps_norms_softmax_and_io_in_fp32(folders, tiny_bundle):
    folder = folders["fp16"]
    for name in ("visual.onnx", "text.onnx", "labeler.onnx"):
        model = onnx.load(str(folder / name))
        inits = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT,
                                                                       onnx.TensorProto.FLOAT16)]
        big16 = sum(i.data_type == onnx.TensorProto.FLOAT16 for i in inits if np.prod(i.dims) >= 1024)
        big32 = sum(i.data_type == onnx.TensorProto.FLOAT for i in inits if np.prod(i.dims) >= 1024)
        assert big16 > 0 and big32 == 0, name  # the weights are fp16
        types = _input_types(model)
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMax", "ArgMax"):
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, (name, node.name)
        for value in [*model.graph.input, *model.graph.output]:
            assert value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT32)
    rows = verify_folder(folder, tiny_bundle, sample_images(3))
    assert not failures(rows), rows
    got = {(r.graph, r.metric): r.value for r in rows}
    assert got[("labeler.onnx", "S_final max abs diff")] <= 1e-2
    assert got[("text.onnx", "class cosine (min)")] >= 0.999  # EOT pooling survives fp16 (ids kept in fp32)


def test_int8_graph_is_quantized_and_reports_parity(folders, tiny_bundle):
    folder = folders["int8"]
    ops = {n.op_type for n in onnx.load(str(folder / "labeler.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops
    m = read_manifest(folder)
    assert m.files["labeler.onnx"]["precision"] == "int8" and m.files["text.onnx"]["precision"] == "fp32"
    rows = verify_folder(folder, tiny_bundle, sample_images(3))
    labeler = [r for r in rows if r.graph == "labeler.onnx"]
    assert all(r.passed is None for r in labeler)  # reported, not judged
    # the tiny random model's scores sit near 1/C: judge the int8 error against their spread, not in absolute terms
    spread = float(np.ptp(_torch_scores(tiny_bundle, sample_images(3))))
    assert next(r.value for r in labeler if r.metric == "S_final max abs diff") < 0.2 * spread
    assert next(r.value for r in labeler if r.metric == "top-1 agreement") >= 2 / 3
    assert next(r.value for r in rows if r.metric == "crop cosine (min)") >= 0.999


def _torch_scores(bundle, images) -> np.ndarray:
    from cdul_rt.crops import image_crops
    from cdul_rt.engines.torch.runner import TorchLabelerRunner
    from cdul_rt.preprocess import normalize_batch
    from cdul_rt.textcache import encode_text_torch
    from cdul_rt.vocab import DEFAULT_TEMPLATE, load_vocabulary

    crops = normalize_batch(np.concatenate([image_crops(im, 3, bundle.preprocess) for im in images]),
                            bundle.preprocess)
    text = encode_text_torch(bundle, load_vocabulary("voc").prompts(DEFAULT_TEMPLATE))
    with TorchLabelerRunner(bundle, grid=3) as runner:
        return runner.infer({"crops": crops, "text_embeddings": text})["S_final"]


def test_cli_export_verify_prints_table_and_a_working_label_command(tmp_path, tiny_config):
    out = tmp_path / "art"
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
                                  "--grid", "2", "--out", str(out), "--verify"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "S_final max abs diff" in r.output and "FAIL" not in r.output
    line = next(ln.strip() for ln in r.output.splitlines() if ln.strip().startswith("cdul-rt label"))
    make_images(tmp_path / "imgs", 3)
    images = tmp_path / "imgs"
    args = line.split()[1:]
    args[args.index("IMAGES")] = str(images)
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "l.jsonl"), "-q", "-j", "0"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == 3


def test_cli_export_rejects_bad_options(tmp_path, tiny_config):
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_config), "--pretrained", "none", "--opset", "16",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "opset must be >= 17" in r.output


# -- damaged and mismatched folders ---------------------------------------------------------------------------------

@pytest.fixture
def copy_fp32(folders, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(folders["fp32"], dst)
    return dst


def _open(folder: Path, tiny_config: Path, **over):
    from cdul_rt.engines.onnxrt import open_labeler
    from cdul_rt.pipeline import LabelConfig
    from cdul_rt.vocab import load_vocabulary

    cfg = LabelConfig(input=folder, out=folder / "x.jsonl", classes="voc", model=str(tiny_config), pretrained="none",
                      runtime="onnxruntime", engine_dir=str(folder))
    for k, v in over.items():
        setattr(cfg, k, v)
    return open_labeler(cfg, load_vocabulary(cfg.classes))


def test_hash_mismatch_is_named(copy_fp32, tiny_config):
    path = copy_fp32 / "labeler.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    with pytest.raises(CdulError, match=r"labeler.onnx does not match its sha256"):
        _open(copy_fp32, tiny_config)


def test_truncated_file_is_named(copy_fp32, tiny_config):
    path = copy_fp32 / "labeler.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CdulError, match=r"labeler.onnx is truncated \(1000 bytes"):
        _open(copy_fp32, tiny_config)


def test_missing_or_broken_manifest(copy_fp32, tiny_config):
    (copy_fp32 / "manifest.json").write_text("{not json")
    with pytest.raises(CdulError, match="not valid JSON"):
        _open(copy_fp32, tiny_config)
    (copy_fp32 / "manifest.json").unlink()
    with pytest.raises(CdulError, match="no manifest.json"):
        _open(copy_fp32, tiny_config)


def test_wrong_model_precision_grid_and_weights(copy_fp32, tiny_config, tmp_path):
    with pytest.raises(CdulError, match="holds model tiny-test-clip.none, not ViT-B-32"):
        _open(copy_fp32, tiny_config, model="ViT-B-32")
    other = tmp_path / "tiny-test-clip.json"
    other.write_text(json.dumps({**json.loads(tiny_config.read_text()), "embed_dim": 16}))
    with pytest.raises(CdulError, match="another config"):
        _open(copy_fp32, tiny_config, model=str(other))
    with pytest.raises(CdulError, match="pass --precision fp32"):
        _open(copy_fp32, tiny_config, precision="fp16")
    with pytest.raises(CdulError, match="pass --grid 3"):
        _open(copy_fp32, tiny_config, grid=2)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"other weights")
    with pytest.raises(CdulError, match="other weights"):
        _open(copy_fp32, tiny_config, weights=str(weights))


def test_wrong_vocabulary_embeddings_are_refused(copy_fp32, tiny_config):
    from cdul_rt.artifacts.textstore import embeddings_path
    from cdul_rt.vocab import load_vocabulary

    m = read_manifest(copy_fp32)
    voc_file = copy_fp32 / m.vocabulary["embeddings"]
    # someone copies the VOC embeddings over the file of another vocabulary
    target = embeddings_path(copy_fp32, load_vocabulary("cat,dog"), m.vocabulary["template"])
    shutil.copyfile(voc_file, target)
    shutil.copyfile(voc_file.with_suffix(".json"), target.with_suffix(".json"))
    with pytest.raises(CdulError, match="embeddings of another vocabulary"):
        _open(copy_fp32, tiny_config, classes="cat,dog")
    # and a damaged stored file of the right vocabulary
    voc_file.write_bytes(voc_file.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CdulError, match="does not match its (recorded )?sha256"):
        _open(copy_fp32, tiny_config)


def test_new_vocabulary_without_tokenizer_gives_advice(copy_fp32, tiny_config):
    m = read_manifest(copy_fp32)
    m.tokenizer = {**m.tokenizer, "kind": "none"}
    m.write(copy_fp32)
    _open(copy_fp32, tiny_config)  # the exported vocabulary still works
    with pytest.raises(CdulError, match="export with the vocabulary you need"):
        _open(copy_fp32, tiny_config, classes="cat,dog")


def test_label_cli_reports_artifact_errors_cleanly(copy_fp32, tiny_config, tmp_path):
    (copy_fp32 / "text.onnx").write_bytes(b"")
    make_images(tmp_path / "imgs", 2)
    images = tmp_path / "imgs"
    r = CliRunner().invoke(main, ["label", str(images), "--runtime", "onnxruntime", "--engine-dir", str(copy_fp32),
                                  "--model", str(tiny_config), "--pretrained", "none", "--classes", "cat,dog",
                                  "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
    assert r.exit_code == 2 and "text.onnx is truncated" in r.output


def test_model_without_exportable_text_tower_still_exports(tmp_path, tiny_config, tiny_bundle, monkeypatch):
    """Text towers other than CLIP's transformer (HF text models): no text.onnx, stored vocabulary still works."""
    import cdul_rt.export.graphs as graphs

    monkeypatch.setattr(graphs, "text_tower_supported", lambda model: False)
    folder = _export(tmp_path, tiny_config, tiny_bundle, "fp32")
    m = verify_artifacts(folder)
    assert "text.onnx" not in m.files and not (folder / "text.onnx").exists() and m.tokenizer["kind"] == "none"
    assert not failures(verify_folder(folder, tiny_bundle, sample_images(2)))
    session = _open(folder, tiny_config)
    assert session.text_embeddings.shape == (20, 32)
    with pytest.raises(CdulError, match="export with the vocabulary you need"):
        _open(folder, tiny_config, classes="cat,dog")
