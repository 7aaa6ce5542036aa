"""End-to-end training runs on 8 generated images with resnet18 at 32 px: outputs, resume equivalence, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from cdul_rt.cli.train import command as train_command  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.labelfile import read_label_file, write_label_file  # noqa: E402

pytestmark = pytest.mark.slow  # trains a classifier per module

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """8 images whose dominant colour is the class; pseudo labels = noisy scores; ground truth as JSONL."""
    root = tmp_path_factory.mktemp("world")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths, truth = [], []
    for i in range(8):
        present = rng.random(3) < 0.5
        present[i % 3] = True
        pixels = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
        for c in np.flatnonzero(present):
            pixels[:, 16 * c: 16 * c + 16, c] = 220
        rel = f"sub/{i}.png" if i % 2 else f"{i}.png"
        Image.fromarray(pixels).save(images / rel)
        paths.append(rel)
        truth.append([CLASSES[c] for c in np.flatnonzero(present)])
    scores = np.clip(np.array([[0.7 if c in t else 0.2 for c in CLASSES] for t in truth])
                     + rng.normal(0, 0.15, (8, 3)), 0.01, 0.99).astype(np.float32)
    labels = write_label_file(root / "labels.jsonl", paths, CLASSES, scores, meta={"threshold": 0.5})
    gt = root / "gt.jsonl"
    gt.write_text("".join(json.dumps({"path": p, "labels": t}) + "\n" for p, t in zip(paths, truth)))
    return images, labels, gt


def _train(images, labels, out, *extra, check=True):
    args = [str(images), str(labels), "--out", str(out), "--arch", "resnet18", "--weights", "none",
            "--image-size", "32", "--batch-size", "4", "--lr", "1e-3", "--warmup-epochs", "1", "--threads", "1",
            "--quiet", *extra]
    result = CliRunner().invoke(train_command, args, catch_exceptions=not check)
    if check:
        assert result.exit_code == 0, result.output
    return result


def _weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def test_run_folder_outputs_and_metrics(world, tmp_path):
    images, labels, gt = world
    out = tmp_path / "run"
    _train(images, labels, out, "--epochs", "3", "--gt", str(gt), "--val-images", str(images), "--val-gt", str(gt),
           "--eval-every", "2")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r.get("phase") for r in rows[1:]] == ["warmup", "align", "align"]
    assert rows[1]["label_change"] == 0 and rows[2]["label_change"] > 0
    assert all(0 < r["map_pseudo"] <= 1 for r in rows)
    assert ["map_pred_train" in r for r in rows] == [False, False, True, True]  # every 2nd epoch and the last
    # the held-out set is the same images here (found by folder discovery, in another order): same mAP
    assert all(r["map_pred_val"] == pytest.approx(r["map_pred_train"]) for r in rows[2:])
    assert rows[1]["map_pseudo"] == rows[0]["map_pseudo"]  # warm-up keeps the labels
    refined = read_label_file(out / "refined_labels.jsonl")
    original = read_label_file(labels)
    assert refined.paths == original.paths and refined.classes == CLASSES
    assert not np.allclose(refined.scores, original.scores, atol=1e-4)
    assert (out / "curves.png").stat().st_size > 1000
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 3
    torch.testing.assert_close(torch.sigmoid(ckpt["ytilde"]), torch.from_numpy(refined.scores), atol=1e-6, rtol=0)
    assert json.loads((out / "config.json").read_text())["arch"] == "resnet18"


def test_resume_equals_uninterrupted_run(world, tmp_path):
    images, labels, _ = world
    full, part = tmp_path / "full", tmp_path / "part"
    _train(images, labels, full, "--epochs", "3", "--seed", "5")
    _train(images, labels, part, "--epochs", "2", "--seed", "5")  # "interrupted" after epoch 2
    _train(images, labels, part, "--epochs", "3", "--seed", "5", "--resume")
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ya = torch.load(full / "checkpoint.pt", weights_only=False)["ytilde"]
    yb = torch.load(part / "checkpoint.pt", weights_only=False)["ytilde"]
    assert torch.equal(ya, yb)
    losses = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()[1:]]
    assert losses == [json.loads(x)["loss"] for x in (part / "metrics.jsonl").read_text().splitlines()[1:]]
    # a different seed gives different weights (the comparison above can fail)
    other = tmp_path / "other"
    _train(images, labels, other, "--epochs", "1", "--seed", "6")
    assert not torch.equal(_weights(other)["fc.weight"], _weights(full)["fc.weight"])


def test_resume_refuses_changed_settings_and_existing_run(world, tmp_path):
    images, labels, _ = world
    out = tmp_path / "run"
    _train(images, labels, out, "--epochs", "1")
    result = _train(images, labels, out, "--epochs", "2", "--resume", "--lr", "1e-2", check=False)
    assert isinstance(result.exception, CdulError) and "lr: 0.001 -> 0.01" in str(result.exception)
    result = _train(images, labels, out, "--epochs", "2", check=False)
    assert isinstance(result.exception, CdulError) and "--resume" in str(result.exception)


def test_no_alignment_keeps_labels(world, tmp_path):
    images, labels, _ = world
    out = tmp_path / "fixed"
    _train(images, labels, out, "--epochs", "2", "--no-alignment")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in rows[1:]] == ["fixed-labels", "fixed-labels"]
    np.testing.assert_allclose(read_label_file(out / "refined_labels.jsonl").scores,
                               read_label_file(labels).scores, atol=2e-6)


def test_bf16_run_and_random_init_warning(world, tmp_path):
    images, labels, _ = world
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty-hub"))  # no cached ImageNet weights
    try:
        result = _train(images, labels, tmp_path / "bf16", "--epochs", "1", "--precision", "bf16",
                        "--weights", "auto")
    finally:
        torch.hub.set_dir(old)
    assert "warning: no ImageNet weights for resnet18" in result.output
    row = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[1])
    assert np.isfinite(row["loss"]) and row["loss"] > 0


def test_resume_continues_from_the_checkpoint_not_from_scratch(world, tmp_path):
    """A resume that retrained from scratch would equal an uninterrupted run too (every epoch is seeded from
    (seed, epoch)); a checkpoint whose weights were changed tells the two apart."""
    images, labels, _ = world
    full, part = tmp_path / "full", tmp_path / "part"
    _train(images, labels, full, "--epochs", "3", "--seed", "5")
    _train(images, labels, part, "--epochs", "2", "--seed", "5")
    ckpt = torch.load(part / "checkpoint.pt", weights_only=False)
    ckpt["model"]["fc.bias"] = ckpt["model"]["fc.bias"] + 3.0  # as if epochs 1-2 had ended elsewhere
    torch.save(ckpt, part / "checkpoint.pt")
    _train(images, labels, part, "--epochs", "3", "--seed", "5", "--resume")
    history = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("epoch") for row in history if "epoch" in row][-1] == 3
    resumed, uninterrupted = _weights(part)["fc.bias"], _weights(full)["fc.bias"]
    assert (resumed - uninterrupted).abs().max() > 1.0  # epoch 3 started from the changed weights


def test_val_pseudo_labels_are_the_held_out_bar_every_epoch(world, tmp_path):
    from cdul_rt.metrics import mean_average_precision

    images, labels, gt = world
    out = tmp_path / "run"
    # the held-out set is the training folder here, with its rows in another order than the label file
    table = read_label_file(labels)
    order = np.argsort(table.paths)[::-1]
    val_labels = write_label_file(tmp_path / "val.jsonl", [table.paths[i] for i in order], CLASSES,
                                  table.scores[order], meta={"threshold": 0.5})
    _train(images, labels, out, "--epochs", "2", "--gt", str(gt), "--val-images", str(images), "--val-gt", str(gt),
           "--val-labels", str(val_labels))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = rows[0]["map_pseudo"]  # same images, same initial labels
    assert [r["map_pseudo_val"] for r in rows] == pytest.approx([expected] * 3)
    assert rows[2]["label_change"] > 0  # the training labels moved; the bar did not
    assert "map_pred_val" in rows[2]
    truth = [json.loads(x) for x in gt.read_text().splitlines()]
    targets = np.array([[c in t["labels"] for c in CLASSES] for t in truth], dtype=int)
    assert expected == pytest.approx(mean_average_precision(table.scores, targets, CLASSES).map)

    short = write_label_file(tmp_path / "short.jsonl", table.paths[:5], CLASSES, table.scores[:5])
    result = _train(images, labels, tmp_path / "bad", "--epochs", "1", "--val-images", str(images),
                    "--val-gt", str(gt), "--val-labels", str(short), check=False)
    assert isinstance(result.exception, CdulError) and "lacks 3 of the 8 held-out images" in str(result.exception)
    result = _train(images, labels, tmp_path / "bad2", "--epochs", "1", "--val-labels", str(short), check=False)
    assert isinstance(result.exception, CdulError) and "needs --val-images" in str(result.exception)


def test_tiny_resnet_trains_from_the_shipped_backbone(world, tmp_path):
    images, labels, gt = world
    out = tmp_path / "tiny"
    result = _train(images, labels, out, "--epochs", "1", "--arch", "tiny-resnet", "--weights", "synth")
    assert "synthetic pre-training" in result.output
    from cdul_rt.train.model import SYNTH_BACKBONE

    shipped = torch.load(SYNTH_BACKBONE, weights_only=True)
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "tiny-resnet" and config["weights"].endswith("tiny-resnet-synth.pth")
    # one epoch moved the backbone away from the shipped weights it started from, the shapes still match
    trained = _weights(out)
    assert trained["layer1.0.conv1.weight"].shape == shipped["layer1.0.conv1.weight"].shape
    assert not torch.equal(trained["layer1.0.conv1.weight"], shipped["layer1.0.conv1.weight"].float())
