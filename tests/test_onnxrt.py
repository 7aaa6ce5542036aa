"""The ONNX Runtime runtime: same scores as torch, labeling without torch, the torch-free tokenizer, input checks,
zeta / lambda as graph inputs, and the one-time export into the cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.export.clip import ExportOptions, export_clip  # noqa: E402
from cdul_rt.labelfile import read_label_file  # noqa: E402

from conftest import BLOCK_TORCH, make_images  # noqa: E402

pytestmark = pytest.mark.slow  # exports a tiny CLIP per module and runs label through it


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("ort") / "fp32"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc"), log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ort-images") / "images"
    make_images(folder, 6)
    return folder


def _label(images: Path, out: Path, tiny_config: Path, *extra: str):
    return CliRunner().invoke(main, ["label", str(images), "--model", str(tiny_config), "--pretrained", "none",
                                     "--out", str(out), "-q", "-j", "0", "--save-parts", *extra],
                              catch_exceptions=False)


def test_label_onnxruntime_matches_torch(tmp_path, artifacts, images, tiny_config):
    for runtime in ("torch", "onnxruntime"):
        r = _label(images, tmp_path / f"{runtime}.npz", tiny_config, "--classes", "voc", "--runtime", runtime,
                   "--engine-dir", str(artifacts))
        assert r.exit_code == 0, r.output
    a, b = read_label_file(tmp_path / "torch.npz"), read_label_file(tmp_path / "onnxruntime.npz")
    assert a.paths == b.paths and a.classes == b.classes and len(a.paths) == 6
    assert np.abs(a.scores - b.scores).max() <= 1e-5
    for part in ("global", "aggregate"):
        assert np.abs(a.parts[part] - b.parts[part]).max() <= 1e-5
    meta = json.loads((tmp_path / "onnxruntime.npz.meta.json").read_text())
    assert meta["config"]["runtime"] == "onnxruntime" and meta["config"]["model"] == "tiny-test-clip.none"


def test_labeling_from_artifacts_never_imports_torch(tmp_path, artifacts, images, tiny_config):
    """A vocabulary that was not exported: tokenised torch-free, encoded by text.onnx, same scores as torch."""
    classes = "red circle,blue square,a dog on a sofa,l'arbre"
    args = ["label", str(images), "--model", str(tiny_config), "--pretrained", "none", "--classes", classes,
            "--runtime", "onnxruntime", "--engine-dir", str(artifacts), "--out", str(tmp_path / "ort.npz"), "-q",
            "-j", "0"]
    script = tmp_path / "run.py"
    script.write_text(BLOCK_TORCH.format(args=args))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _label(images, tmp_path / "torch.npz", tiny_config, "--classes", classes, "--runtime", "torch")
    assert r.exit_code == 0, r.output
    a, b = read_label_file(tmp_path / "torch.npz"), read_label_file(tmp_path / "ort.npz")
    assert a.classes == b.classes == classes.split(",")
    assert np.abs(a.scores - b.scores).max() <= 1e-5
    assert len(list((artifacts / "text_embeddings").glob("*.npy"))) == 2  # stored for the next run


def test_blocked_torch_really_blocks(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text('import sys\nsys.modules["torch"] = None\nimport open_clip\n')
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch" in proc.stderr


def test_tokenizer_matches_open_clip(artifacts):
    from open_clip.tokenizer import SimpleTokenizer

    from cdul_rt.engines.onnxrt.tokenizer import ClipTokenizer

    texts = ["a photo of the dog", "A PHOTO of the  Traffic-Light!", "caf\u00e9 cr\u00e8me &amp; na\u00efve",
             "l'arbre's 3 d\u00e9j\u00e0-vu", "\u72ac\u306e\u5199\u771f", "hot dog 42 x2", "",
             " ".join(["antidisestablishmentarianism"] * 10)]  # the last one is truncated at 16 tokens
    ours = ClipTokenizer(artifacts / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz", 16)(texts)
    theirs = SimpleTokenizer(context_length=16)(texts).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(texts), 16)
    np.testing.assert_array_equal(ours, theirs)
    assert ours[-1, -1] == 49407  # truncated prompts still end in the end-of-text id


def _runner(artifacts: Path, zeta: float = 0.3, lam: float = 1.0):
    from cdul_rt.engines.onnxrt import SessionFromOnnx
    from cdul_rt.engines.onnxrt.runner import OnnxLabelerRunner
    from cdul_rt.artifacts.manifest import read_manifest

    m = read_manifest(artifacts)
    return m, OnnxLabelerRunner(SessionFromOnnx(artifacts / "labeler.onnx"), m.crops_per_image, m.image_size,
                                m.embed_dim, zeta, lam)


def test_runner_checks_inputs_before_onnxruntime(artifacts):
    m, runner = _runner(artifacts)
    s, d = m.image_size, m.embed_dim
    text = np.ones((4, d), np.float32)
    with pytest.raises(CdulError, match="not active"):
        runner.infer({"crops": np.zeros((10, 3, s, s), np.float32), "text_embeddings": text})
    with runner:
        with pytest.raises(CdulError, match="must be float32"):
            runner.infer({"crops": np.zeros((10, 3, s, s), np.float64), "text_embeddings": text})
        with pytest.raises(CdulError, match=f"must have shape \\?x3x{s}x{s}"):
            runner.infer({"crops": np.zeros((10, 3, s + 1, s), np.float32), "text_embeddings": text})
        with pytest.raises(CdulError, match="whole images of 10 crops"):
            runner.infer({"crops": np.zeros((12, 3, s, s), np.float32), "text_embeddings": text})
        with pytest.raises(CdulError, match="missing inputs \\['text_embeddings'\\]"):
            runner.infer({"crops": np.zeros((10, 3, s, s), np.float32)})
        out = runner.infer({"crops": np.zeros((20, 3, s, s), np.float32), "text_embeddings": text})
    assert {k: v.shape for k, v in out.items()} == {"S_final": (2, 4), "S_global": (2, 4), "S_ag": (2, 4),
                                                   "image_embeddings": (2, d)}


@pytest.mark.parametrize("zeta,lam", [(0.0, 1.0), (0.3, 0.0), (1.0, 0.5)])
def test_zeta_and_lambda_are_graph_inputs(artifacts, zeta, lam):
    """labeler.onnx == the numpy reference math (eqs. 1-6) on visual.onnx embeddings, for any zeta and lambda."""
    from cdul_rt.engines.onnxrt import SessionFromOnnx
    from cdul_rt.engines.onnxrt.runner import OnnxVisualRunner
    from cdul_rt.aggregation import aggregate_np
    from cdul_rt.labeling import class_scores_np

    m, runner = _runner(artifacts, zeta, lam)
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(30, 3, m.image_size, m.image_size)).astype(np.float32)
    text = rng.normal(size=(5, m.embed_dim)).astype(np.float32)
    with OnnxVisualRunner(SessionFromOnnx(artifacts / "visual.onnx"), m.image_size) as visual:
        emb = visual.infer({"crops": crops})["image_embeddings"]
    s = class_scores_np(emb, text, m.model["logit_scale"]).reshape(3, 10, 5)
    want = aggregate_np(s, "cdul", zeta, lam)
    with runner:
        got = runner.infer({"crops": crops, "text_embeddings": text})
    for name, ref in zip(("S_final", "S_global", "S_ag"), want):
        np.testing.assert_allclose(got[name], ref, atol=2e-6)


def test_without_engine_dir_exports_once_into_the_cache(tmp_path, images, tiny_config, monkeypatch):
    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path / "cache"))
    r = _label(images, tmp_path / "a.jsonl", tiny_config, "--classes", "voc", "--runtime", "onnxruntime",
               "--grid", "2")
    assert r.exit_code == 0, r.output
    assert "exporting" in r.output and "once into" in r.output
    folders = list((tmp_path / "cache" / "engines").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()
    r = _label(images, tmp_path / "b.jsonl", tiny_config, "--classes", "voc", "--runtime", "onnxruntime",
               "--grid", "2")
    assert r.exit_code == 0 and "exporting" not in r.output
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_cuda_without_onnxruntime_gpu_says_what_to_install(artifacts, images, tiny_config, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    r = CliRunner().invoke(main, ["label", str(images), "--model", str(tiny_config), "--pretrained", "none",
                                  "--classes", "voc", "--runtime", "onnxruntime", "--engine-dir", str(artifacts),
                                  "--device", "cuda", "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
    assert r.exit_code == 2 and "onnxruntime-gpu" in r.output
