"""`cdul-rt demo`: scenes -> `label` with the shipped tiny CLIP -> mode table, offline."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("open_clip")


def test_demo_labels_scenes_and_its_cdul_row_matches_the_label_file(tmp_path):
    from click.testing import CliRunner

    from cdul_rt.cli import main

    result = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--scenes", "10", "--no-train", "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = dict(re.findall(r"^\s+(global|avg|max|cdul)\s+([\d.]+)$", result.output, flags=re.M))
    assert set(rows) == {"global", "avg", "max", "cdul"}
    file_map = re.search(r"label file \(pseudo_labels.jsonl, mode cdul\): ([\d.]+)", result.output).group(1)
    # what `cdul-rt label` wrote is what the table's cdul row measured (the file rounds scores to 7 digits)
    assert abs(float(file_map) - float(rows["cdul"])) <= 0.3
    lines = (tmp_path / "d" / "pseudo_labels.jsonl").read_text().splitlines()
    assert len(lines) == 10 and {"path", "scores"} <= set(json.loads(lines[0]))


def test_demo_rejects_too_few_scenes(tmp_path):
    from click.testing import CliRunner

    from cdul_rt.cli import main

    result = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--scenes", "3", "--no-train"])
    assert result.exit_code != 0 and "at least 8 scenes" in result.output
    result = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--lr", "0"])
    assert result.exit_code != 0 and "--lr must be a positive" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()  # refused before any scene is written
    result = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--quick", "--full"])
    assert result.exit_code != 0 and "choose one" in result.output and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_trains_from_random_weights_when_asked_and_can_skip_the_comparison(tmp_path):
    from click.testing import CliRunner

    from cdul_rt.cli import main

    out = tmp_path / "d"
    result = CliRunner().invoke(main, ["demo", str(out), "--scenes", "8", "--val-scenes", "8", "--epochs", "2",
                                       "--weights", "none", "--no-compare", "--lr", "3e-4", "--threads", "1"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["weights"] == "none" and config["lr"] == 3e-4 and "Adam lr 0.0003," in result.output
    assert not (out / "run-no-alignment").exists() and "without alignment (" not in result.output
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    table = re.findall(r"^\s+(\d)\s+(initial|warmup|align)\s+([\d.]+)", result.output, re.M)
    assert [(int(e), p) for e, p, _ in table] == [(0, "initial"), (1, "warmup"), (2, "align")]
    assert [float(m) for _, _, m in table] == [round(100 * r["map_pseudo"], 1) for r in rows]
    assert re.search(r"^held-out scenes: classifier [\d.]+ mAP vs its initial pseudo labels [\d.]+", result.output,
                     re.M)
    assert (out / "curves.png").is_file() and (out / "val_pseudo_labels.jsonl").is_file()


def test_demo_presets_set_the_size_and_an_explicit_lr_stays():
    from cdul_rt.cli.demo import demo_size

    assert demo_size(False, False, 240, 120, 8, None) == (240, 120, 8, None)
    assert demo_size(True, False, 240, 120, 8, None) == (120, 80, 6, None)
    assert demo_size(False, True, 240, 120, 8, None) == (800, 160, 20, 2e-4)
    assert demo_size(False, True, 240, 120, 8, 1e-4) == (800, 160, 20, 1e-4)
    assert demo_size(False, True, 240, 120, 8, 0.0) == (800, 160, 20, 0.0)  # kept, so the recipe refuses it


@pytest.mark.parametrize("no_alignment, hint", [(0.68, True), (0.64, True), (0.62, False)])
def test_demo_story_points_to_full_only_when_alignment_did_not_win(tmp_path, capsys, no_alignment, hint):
    from cdul_rt.cli.demo import _print_story

    rows = [{"epoch": 0, "map_pseudo": 0.56, "map_pseudo_val": 0.58}, {"epoch": 8, "map_pseudo": 0.6,
                                                                         "map_pred_val": 0.64}]
    _print_story(rows, [{"epoch": 8, "map_pred_val": no_alignment}], tmp_path)
    out = capsys.readouterr().out
    assert "classifier 64.0 mAP vs its initial pseudo labels 58.0 on the same scenes (+6.0)" in out
    assert ("cdul-rt demo --full" in out) is hint
