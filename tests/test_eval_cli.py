"""`cdul-rt eval` end to end on fixture files: text and JSON output, exclusions, clean errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.labelfile import write_label_file

sklearn_metrics = pytest.importorskip("sklearn.metrics")

CLASSES = ["cat", "dog", "person", "car"]


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(1)
    paths = [f"img/{i}.jpg" for i in range(12)]
    truth = (rng.random((12, 4)) < 0.4).astype(int)
    truth[:, 3] = 0  # car never present -> excluded
    truth[0, :3] = 1
    scores = np.clip(truth * 0.4 + rng.random((12, 4)) * 0.6, 0, 1).astype(np.float32)
    pred = write_label_file(tmp_path / "pred.csv", paths, CLASSES, scores)
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"path": p.split("/")[1], "labels": [c for c, t in zip(CLASSES, row) if t]})
                          + "\n" for p, row in zip(paths, truth)))
    return pred, gt, truth, scores


def test_eval_json_matches_sklearn(files):
    pred, gt, truth, scores = files
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["excluded_classes_without_positives"] == ["car"]
    expected = [sklearn_metrics.average_precision_score(truth[:, j], scores[:, j]) for j in range(3)]
    assert data["mAP"] == pytest.approx(np.mean(expected), abs=1e-6)  # csv keeps 7 decimals
    assert data["per_class_AP"]["dog"] == pytest.approx(expected[1], abs=1e-6)


def test_eval_text_output_and_errors(files, tmp_path):
    pred, gt, _, _ = files
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt)])
    assert result.exit_code == 0
    assert "mAP" in result.output and "excluded (no positive in the ground truth): car" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "0.jpg", "labels": ["unicorn"]}\n')
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "have no ground truth" in result.output
