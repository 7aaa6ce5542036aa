"""The README's Python examples run as written ("Use from Python", and the Triton client snippet against the
repository `export --triton` writes, its HTTP client replaced by a stand-in that runs the served graph with ONNX
Runtime), offline with the shipped tiny CLIP."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    level = heading.split(" ", 1)[0]
    section = text.split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run(blocks: list[str], namespace: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return out.getvalue()


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:

    from cdul_rt.bench.images import photo_like

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    photo_like(96, 72, rng).save(tmp_path / "photos" / "a.jpg")
    photo_like(80, 80, rng).save(tmp_path / "photos" / "b.png")
    return tmp_path


@pytest.mark.slow
def test_use_from_python_examples_run(photos):
    from cdul_rt.cli import main
    from cdul_rt.labelfile import write_label_file

    labels = write_label_file(photos / "l.jsonl", ["a.jpg", "b.png"], ["circle", "square"],
                              np.array([[0.9, 0.1], [0.2, 0.8]], np.float32))
    r = CliRunner().invoke(main, ["train", "photos", str(labels), "--out", "runs/demo", "--arch", "resnet18",
                                  "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
                                  "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    blocks = python_blocks("## Use from Python")
    assert len(blocks) == 3
    ns: dict = {}
    out = _run(blocks, ns)
    res, lab = ns["res"], ns["lab"]
    assert res.scores.shape == (2, len(lab.classes)) and res.errors == [None, "not an image (or an unsupported format)"]
    assert "[ True False] not an image (or an unsupported format)" in out
    assert ns["image_emb"].shape == (1, 64) and ns["text_emb"].shape == (2, 64)
    assert ns["pred"].scores.shape == (2, 2) and "(2, 2)" in out
    with pytest.raises(Exception, match="this Labeler is closed"):  # the `with` block closed it
        lab.label(["photos/a.jpg"])


class _FakeTriton(types.ModuleType):
    """``tritonclient.http`` for the snippet: ``infer`` runs the repository's ``model.onnx`` with ONNX Runtime."""

    def __init__(self, repo: Path) -> None:
        super().__init__("tritonclient.http")
        repo_ = repo

        class InferInput:
            def __init__(self, name, shape, datatype):
                assert datatype == "FP32"
                self.name, self.shape = name, shape

            def set_data_from_numpy(self, array):
                assert list(array.shape) == self.shape and array.dtype == np.float32
                self.array = array

        class InferenceServerClient:
            def __init__(self, url):
                self.url = url

            def infer(self, model, inputs):
                import onnxruntime as ort

                sess = ort.InferenceSession(str(repo_ / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
                outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {i.name: i.array for i in inputs})))
                return types.SimpleNamespace(as_numpy=outs.__getitem__)

        self.InferInput, self.InferenceServerClient = InferInput, InferenceServerClient


@pytest.mark.slow
def test_triton_client_snippet_sends_the_crops_label_makes(photos, monkeypatch):
    pytest.importorskip("onnxruntime")
    from cdul_rt import Labeler
    from cdul_rt.export.clip import ExportOptions, export_clip
    from cdul_rt.export.triton import TritonOptions, write_triton_repository

    export_clip(ExportOptions(out=photos / "art", model="cdul-tiny", classes="synth"), log=lambda m: None)
    write_triton_repository(photos / "art", photos / "triton-repo", TritonOptions(kind="KIND_CPU"),
                            models=("labeler",), log=lambda m: None)
    (photos / "cat.jpg").write_bytes((photos / "photos" / "a.jpg").read_bytes())
    package = types.ModuleType("tritonclient")
    package.http = _FakeTriton(photos / "triton-repo")
    monkeypatch.setitem(sys.modules, "tritonclient", package)
    monkeypatch.setitem(sys.modules, "tritonclient.http", package.http)
    (block,) = python_blocks("### Triton Inference Server")
    ns: dict = {}
    out = _run([block], ns)
    with Labeler.open(engine_dir=photos / "art", classes="synth") as lab:
        want = lab.label(["cat.jpg"]).scores[0]
    np.testing.assert_allclose(ns["scores"], want, atol=1e-5)
    assert str(sorted(zip(ns["scores"], ns["info"]["classes"]), reverse=True)[:5]) in out
