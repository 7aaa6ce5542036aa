"""`cdul-rt predict` with a torch run folder: numbers equal the model's, resume, bad files, eval round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.labelfile import read_label_file, write_label_file  # noqa: E402

pytestmark = pytest.mark.slow  # trains a classifier per module

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    paths = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (30, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
        paths.append(f"{i}.png")
    labels = write_label_file(root / "labels.npz", paths, CLASSES, rng.random((6, 3)).astype(np.float32))
    out = root / "run"
    result = CliRunner().invoke(main, ["train", str(images), str(labels), "--out", str(out), "--arch", "resnet18",
                                       "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size",
                                       "3", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    return images, out


def test_predict_matches_the_model_and_resumes(run, tmp_path):
    images, run_dir = run
    out = tmp_path / "pred.jsonl"
    args = ["predict", str(images), "--run", str(run_dir), "--out", str(out), "--quiet", "--threads", "1",
            "--batch-size", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = read_label_file(out)
    assert sorted(table.paths) == [f"{i}.png" for i in range(6)] and table.classes == CLASSES
    # by hand: the whole image resized to 32x32, ImageNet-normalised, through the saved model
    from cdul_rt.train.checkpoint import load_model_file
    from cdul_rt.train.model import build_classifier

    payload = load_model_file(run_dir)
    model = build_classifier("resnet18", 3)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    img = np.asarray(Image.open(images / "3.png").convert("RGB").resize((32, 32), Image.Resampling.BILINEAR),
                     np.float32) / 255.0
    x = (img - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))).numpy()[0]
    np.testing.assert_allclose(table.scores[table.paths.index("3.png")], expected, atol=1e-6)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["runtime"] == "torch" and meta["classes"] == CLASSES
    # re-run: everything is already there
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "6 already done" in again.output
    assert len(read_label_file(out).paths) == 6


def test_predict_skips_unreadable_files(run, tmp_path):
    images, run_dir = run
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "good.png").write_bytes((images / "0.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(main, ["predict", str(folder), "--run", str(run_dir), "--out", str(out), "-q",
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert read_label_file(out).paths == ["good.png"]
    failures = [json.loads(x) for x in out.with_name(out.name + ".failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["broken.jpg"]


def test_predict_needs_exactly_one_model(run, tmp_path):
    images, _ = run
    result = CliRunner().invoke(main, ["predict", str(images), "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2 and "exactly one of --run" in result.output
