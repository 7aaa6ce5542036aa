"""The Python API on exported folders: `Labeler.open(engine_dir=...)` with torch import blocked (labels, image and
text embeddings equal the torch runtime's), and `Classifier` on a run folder and its ONNX export (= `predict`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from cdul_rt import Classifier, Labeler  # noqa: E402
from cdul_rt.cli import main  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.labelfile import read_label_file  # noqa: E402

from conftest import make_images, train_tiny_classifier  # noqa: E402

CLASSES = "red circle,blue square,a dog on a sofa"  # not the exported vocabulary: text.onnx + torch-free tokenizer


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_config) -> Path:
    from cdul_rt.export.clip import ExportOptions, export_clip

    out = tmp_path_factory.mktemp("api-ort") / "fp32"
    export_clip(ExportOptions(out=out, model=str(tiny_config), pretrained="none", classes="voc", grid=2),
                log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("api-ort-images") / "images", 5, seed=9)


TORCH_FREE = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, here and in everything imported below
import numpy as np
from PIL import Image
from cdul_rt import Labeler
images = {images!r}
with Labeler.open(engine_dir={folder!r}, classes={classes!r}) as lab:
    assert lab.config["runtime"] == "onnxruntime" and lab.config["grid"] == 2  # runtime and grid from the folder
    res = lab.label([images[0], open(images[1], "rb").read(), Image.open(images[2]), *images[3:]])
    emb = lab.embed_images(images)
    text = lab.embed_texts(["a dog", "a photo of the cat"])
np.savez({out!r}, scores=res.scores, parts=res.global_scores, label_emb=res.embeddings, emb=emb, text=text)
assert sys.modules.get("torch") is None
print("torch-free open, label, embed_images, embed_texts: ok")
"""


def test_onnxruntime_labeler_opens_and_runs_with_torch_blocked(tmp_path, artifacts, images, tiny_config):
    script = tmp_path / "torch_free.py"
    script.write_text(TORCH_FREE.format(images=[str(p) for p in images], folder=str(artifacts), classes=CLASSES,
                                        out=str(tmp_path / "ort.npz")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch-free open" in proc.stdout
    got = np.load(tmp_path / "ort.npz")
    with Labeler.open(str(tiny_config), pretrained="none", classes=CLASSES, grid=2, runtime="torch") as lab:
        assert lab.runner.name == "torch"  # the reference is torch, not the default rule's onnxruntime
        want = lab.label(images)
        emb, text = lab.embed_images(images), lab.embed_texts(["a dog", "a photo of the cat"])
    assert np.abs(got["scores"] - want.scores).max() <= 1e-5
    assert np.abs(got["parts"] - want.global_scores).max() <= 1e-5
    for a, b in ((got["label_emb"], want.embeddings), (got["emb"], emb), (got["text"], text)):
        assert a.shape == b.shape and (a * b).sum(1).min() >= 0.9999
    assert (got["emb"] * got["label_emb"]).sum(1).min() >= 0.9999  # visual.onnx == labeler.onnx's output


def test_import_cdul_rt_api_does_not_import_torch():
    code = "import sys; from cdul_rt import Labeler, Classifier, prepare_crops; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_engine_dir_checks_given_options_like_label(artifacts):
    with pytest.raises(CdulError, match="--grid"):
        Labeler.open(engine_dir=artifacts, grid=3, classes="voc")
    with Labeler.open(engine_dir=artifacts, classes="voc") as lab:
        assert lab.options.grid == 2 and lab.options.runtime == "onnxruntime" and len(lab.classes) == 20


# -- Classifier ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("torch")
    from cdul_rt.export.classifier import export_classifier

    root = tmp_path_factory.mktemp("api-clf")
    folder, run = train_tiny_classifier(root, list("abcd"))
    export_classifier(run, root / "engine", images=[folder])
    return folder, run, root / "engine"


@pytest.mark.parametrize("kind", ["run", "engine"])
def test_classifier_predict_equals_the_predict_command(trained, tmp_path, kind):
    folder, run, engine = trained
    path = run if kind == "run" else engine
    out = tmp_path / "pred.npz"
    r = CliRunner().invoke(main, ["predict", str(folder), f"--{kind}", str(path), "--out", str(out), "-q",
                                  "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    table = read_label_file(out)
    with Classifier.open(path, batch_size=2) as clf:
        assert clf.runner.name == ("torch" if kind == "run" else "onnxruntime") and clf.classes == list("abcd")
        pred = clf.predict([folder / p for p in table.paths])
        mixed = clf.predict([(folder / table.paths[0]).read_bytes(), b"junk", folder / table.paths[1]],
                            errors="collect")
    written = np.round(pred.scores.astype(np.float64), 7).astype(np.float32)  # label files keep 7 decimals
    assert np.abs(written - table.scores).max() == 0.0
    np.testing.assert_allclose(mixed.scores[0], pred.scores[0], atol=1e-6)  # another batch: ulps may differ
    assert mixed.errors[1] == "not an image (or an unsupported format)" and np.isnan(mixed.scores[1]).all()
    with pytest.raises(CdulError, match=r"image 1 \(4 bytes\)"):
        Classifier.open(path).predict([folder / table.paths[0], b"junk"])


def test_classifier_open_says_what_to_give(trained, tmp_path):
    _, run, engine = trained
    with pytest.raises(CdulError, match="does not exist"):
        Classifier.open(tmp_path / "nope")
    with pytest.raises(CdulError, match="runtime='onnxruntime'"):
        Classifier.open(engine, runtime="torch")
    with pytest.raises(CdulError, match="classifier.manifest.json"):
        Classifier.open(run, runtime="onnxruntime")


def test_onnxruntime_api_equals_the_label_file_exactly(tmp_path, artifacts, images):
    out = tmp_path / "ort.npz"
    r = CliRunner().invoke(main, ["label", str(images[0].parent), "--runtime", "onnxruntime", "--engine-dir",
                                  str(artifacts), "--classes", "voc", "--out", str(out), "-q", "-j", "0",
                                  "--save-parts"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    table = read_label_file(out)
    root = images[0].parent
    with Labeler.open(engine_dir=artifacts, classes="voc") as lab:
        res = lab.label([root / p for p in table.paths])
    for ours, theirs in ((res.scores, table.scores), (res.global_scores, table.parts["global"]),
                         (res.aggregate_scores, table.parts["aggregate"])):
        written = np.round(ours.astype(np.float64), 7).astype(np.float32)  # label files keep 7 decimals
        assert np.abs(written - theirs).max() == 0.0


def test_one_classifier_shared_by_threads_equals_serial(trained):
    import threading

    folder, run, _ = trained
    paths = sorted(folder.glob("*.jpg"))
    with Classifier.open(run, batch_size=2) as clf:
        serial = [clf.predict(paths[i:i + 3]).scores for i in range(3)]
        got: dict[int, list] = {i: [] for i in range(3)}
        threads = [threading.Thread(target=lambda i=i: got[i].extend(clf.predict(paths[i:i + 3]).scores
                                                                     for _ in range(3))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(3):
        assert len(got[i]) == 3  # 3 calls, each [3, C]
        for scores in got[i]:
            np.testing.assert_array_equal(scores, serial[i])


def test_classifier_checks_its_options_and_says_when_closed(trained, tmp_path):
    """threshold / top_k checked as label checks them (a NaN threshold silently listed no class), for the API and
    `cdul-rt predict`; use after close says closed (not "runner ... not active; call activate()"); one image where
    a list is expected is refused."""
    folder, run, engine = trained
    for bad, message in ((float("nan"), "--threshold must be in"), (1.5, "--threshold must be in")):
        with pytest.raises(CdulError, match=message):
            Classifier.open(engine, threshold=bad)
        r = CliRunner().invoke(main, ["predict", str(folder), "--engine", str(engine), "--out",
                                      str(tmp_path / "p.jsonl"), "-q", "--threshold", str(bad)])
        assert r.exit_code != 0 and message in r.output, r.output
    with pytest.raises(CdulError, match="--top-k must be >= 1"):
        Classifier.open(engine, top_k=0)
    clf = Classifier.open(engine)
    with pytest.raises(CdulError, match="must be a list of images"):
        clf.predict(sorted(folder.glob("*.jpg"))[0])
    clf.close()
    clf.close()  # twice is harmless
    with pytest.raises(CdulError, match="this Classifier is closed"):
        clf.predict(sorted(folder.glob("*.jpg"))[:1])


NEEDS_TORCH = """
import sys
sys.modules["torch"] = None
from cdul_rt import Classifier, Labeler
from cdul_rt.cli import main
from cdul_rt.errors import CdulError
for name, call in (("labeler", lambda: Labeler.open({model!r}, pretrained="none", runtime="torch")),
                   ("classifier", lambda: Classifier.open({run!r}))):
    try:
        call()
    except CdulError as exc:
        assert str(exc).startswith("this needs torch, which is not installed here"), exc
        print(name, "refused")
sys.argv = ["cdul-rt", "label", {images!r}, "--out", {out!r}, "--runtime", "torch", "--model", {model!r},
            "--pretrained", "none"]
main()
"""


def test_torch_free_install_asked_for_torch_gets_a_message(tmp_path, trained, tiny_config):
    """A torch-free install (README: runs exported folders) asked for the torch runtime or a run folder: one
    message saying what runs without torch, not `ModuleNotFoundError` from deep inside open_clip."""
    folder, run, _ = trained
    script = tmp_path / "needs_torch.py"
    script.write_text(NEEDS_TORCH.format(model=str(tiny_config), run=str(run), images=str(folder),
                                         out=str(tmp_path / "x.jsonl")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["labeler", "refused", "classifier", "refused"], proc.stderr[-2000:]
    assert proc.returncode == 2 and "Error: this needs torch" in proc.stderr and "Traceback" not in proc.stderr
