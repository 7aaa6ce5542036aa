"""Every labeler runtime also returns ``image_embeddings``: the L2-normalised global-view embedding of each image,
from the same encoder call as the scores. Checked against open_clip's ``encode_image`` called directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdul_rt.errors import CdulError

GRID = 2


@pytest.fixture(scope="module")
def bundle(tiny_config):
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    return load_clip(resolve_model(str(tiny_config), "none"))


@pytest.fixture(scope="module")
def crops(bundle) -> np.ndarray:
    from PIL import Image

    from cdul_rt.crops import image_crops
    from cdul_rt.preprocess import normalize_batch

    rng = np.random.default_rng(3)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (33, 33), (70, 45))]
    return normalize_batch(np.concatenate([image_crops(im, GRID, bundle.preprocess) for im in imgs]),
                           bundle.preprocess)


def _encoder_reference(bundle, crops: np.ndarray) -> np.ndarray:
    """The visual encoder called directly on each image's global view (crop 0 of every 1+g^2)."""
    import torch

    with torch.no_grad():
        emb = bundle.model.encode_image(torch.from_numpy(crops[::1 + GRID * GRID]), normalize=True)
    return emb.numpy()


def _check(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos
    # the three images differ, so a runner returning one image's embedding for all would fail here
    assert (got @ got.T)[~np.eye(len(got), dtype=bool)].max() < 0.9999


def test_torch_runner_returns_global_embeddings(bundle, crops):
    from cdul_rt.engines.torch.runner import TorchLabelerRunner

    text = np.eye(5, int(bundle.config["embed_dim"]), dtype=np.float32)
    with TorchLabelerRunner(bundle, grid=GRID) as runner:
        out = runner.infer({"crops": crops, "text_embeddings": text})
    assert out["S_final"].shape == (3, 5)
    _check(out["image_embeddings"], _encoder_reference(bundle, crops))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_config, bundle) -> Path:
    pytest.importorskip("onnxruntime")
    from cdul_rt.export.clip import ExportOptions, export_clip

    out = tmp_path_factory.mktemp("emb") / "fp32"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc", grid=GRID),
                log=lambda m: None, bundle=bundle)
    return out


def _onnx_runner(path: Path, artifacts: Path):
    from cdul_rt.engines.onnxrt import SessionFromOnnx
    from cdul_rt.engines.onnxrt.runner import OnnxLabelerRunner
    from cdul_rt.artifacts.manifest import read_manifest

    m = read_manifest(artifacts)
    return m, OnnxLabelerRunner(SessionFromOnnx(path), m.crops_per_image, m.image_size, m.embed_dim, 0.3, 1.0)


def test_onnxruntime_labeler_graph_returns_global_embeddings(bundle, crops, artifacts):
    m, runner = _onnx_runner(artifacts / "labeler.onnx", artifacts)
    text = np.eye(5, m.embed_dim, dtype=np.float32)
    with runner:
        out = runner.infer({"crops": crops, "text_embeddings": text})
    _check(out["image_embeddings"], _encoder_reference(bundle, crops))
    assert "image_embeddings" in m.labeler["outputs"]


def test_old_labeler_graph_still_labels_and_asks_for_a_reexport(tmp_path, crops, artifacts):
    """A labeler.onnx exported before the embeddings output: scores as before, embeddings refused clearly."""
    import onnx

    from cdul_rt.engines.base import image_embeddings

    model = onnx.load(str(artifacts / "labeler.onnx"))
    keep = [o for o in model.graph.output if o.name != "image_embeddings"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(tmp_path / "old.onnx"))
    m, old = _onnx_runner(tmp_path / "old.onnx", artifacts)
    _, new = _onnx_runner(artifacts / "labeler.onnx", artifacts)
    feed = {"crops": crops, "text_embeddings": np.eye(5, m.embed_dim, dtype=np.float32)}
    with old, new:
        got, want = old.infer(feed), new.infer(feed)
    assert sorted(got) == ["S_ag", "S_final", "S_global"]
    np.testing.assert_array_equal(got["S_final"], want["S_final"])
    with pytest.raises(CdulError, match="re-export the folder with `cdul-rt export`"):
        image_embeddings(got, "labeler.onnx")
    assert image_embeddings(want) is want["image_embeddings"]


def test_triton_serving_labeler_keeps_the_embedding_width(artifacts):
    import onnx

    from cdul_rt.artifacts.manifest import read_manifest
    from cdul_rt.export.triton import serving_labeler

    m = read_manifest(artifacts)
    served = serving_labeler(onnx.load(str(artifacts / "labeler.onnx")), m.crops_per_image,
                             np.eye(7, m.embed_dim, dtype=np.float32), 0.3, 1.0)
    dims = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in served.graph.output}
    assert dims["image_embeddings"] == ["images", m.embed_dim] and dims["S_final"] == ["images", 7]


def test_a_cached_export_without_embeddings_is_exported_again(tmp_path, tiny_config, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    import json

    from cdul_rt.prepare import cached_folder
    from cdul_rt.pipeline import LabelConfig

    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path / "cache"))
    cfg = LabelConfig(input=tmp_path, out=tmp_path / "x.jsonl", model=str(tiny_config), pretrained="none",
                      classes="voc", grid=GRID, runtime="onnxruntime")
    folder = cached_folder(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["labeler"]["outputs"].remove("image_embeddings")  # as written by an older cdul-rt
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cached_folder(cfg) == folder
    assert "predates image embeddings; exporting it again" in capsys.readouterr().err
    assert "image_embeddings" in json.loads((folder / "manifest.json").read_text())["labeler"]["outputs"]
    assert cached_folder(cfg) == folder and "exporting" not in capsys.readouterr().err  # reused from now on
