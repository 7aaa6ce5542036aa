"""The README's set-up commands are what CI runs, and its main job runs (Polygraphy's test_examples style)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the README main job (demo) and reads its commands

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_two_setup_commands_and_ci_runs_them():
    install, tests = setup_commands()
    assert "\n" not in install and "\n" not in tests  # one command each
    ci = (ROOT / ".ci" / "run").read_text()
    # CI installs the same packages the README's first command installs...
    for part in install.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"]:
            assert " ".join(words[2:]) in ci.replace("python -m pip install -q ", "pip install ").replace(
                "'", ""), part
    # ...and runs the README's test command
    test_args = shlex.split(tests)[1:]  # drop the interpreter path
    assert " ".join(test_args) in ci


def test_readme_main_job_runs_offline(tmp_path):
    """The README's main job (`cdul-rt demo`, after the install) end to end, in its --quick size."""
    import os
    import subprocess
    import sys

    install, _ = setup_commands()
    main_job = shlex.split(install.split("&&")[-1])
    assert main_job[:2] == ["cdul-rt", "demo"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CDUL_RT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cdul_rt", *main_job[1:], str(tmp_path / "demo"), "--quick", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    rows = dict(re.findall(r"^\s+(global|avg|max|cdul)\s+([\d.]+)$", out, re.M))
    assert set(rows) == {"global", "avg", "max", "cdul"}
    assert float(rows["cdul"]) > float(rows["global"])  # the paper's effect, on the shipped tiny CLIP
    assert (tmp_path / "demo" / "run" / "model.pt").is_file()
    # the training story: the classifier against its initial pseudo labels and against the run without alignment,
    # each number the one its run folder recorded
    runs = {name: [json.loads(x) for x in (tmp_path / "demo" / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("run", "run-no-alignment")}
    vs_labels = re.search(r"^held-out scenes: classifier ([\d.]+) mAP vs its initial pseudo labels ([\d.]+)", out, re.M)
    vs_fixed = re.search(r"^held-out scenes: classifier ([\d.]+) mAP vs ([\d.]+) without alignment", out, re.M)
    assert float(vs_labels[1]) == pytest.approx(100 * runs["run"][-1]["map_pred_val"], abs=0.051)
    assert float(vs_labels[2]) == pytest.approx(100 * runs["run"][0]["map_pseudo_val"], abs=0.051)
    assert float(vs_fixed[2]) == pytest.approx(100 * runs["run-no-alignment"][-1]["map_pred_val"], abs=0.051)
    assert [r["phase"] for r in runs["run-no-alignment"][1:]] == ["fixed-labels"] * (len(runs["run"]) - 1)
    assert (tmp_path / "demo" / "curves.png").is_file() and (tmp_path / "demo" / "run" / "curves.png").is_file()
