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
