"""The README's set-up commands are what CI runs, and its main job runs (Polygraphy's test_examples style)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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
