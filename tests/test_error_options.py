"""Every option an error message suggests exists (issue 14 item 11).

The messages are read from the source: the string literals inside every ``CdulError(...)`` call, plus the strings
assigned to the names such a call uses (hints kept in constants or local variables). Every ``--flag`` in them must be
an option of some ``cdul-rt`` command, or a flag of another tool that the message names (listed below with the tool).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click

import cdul_rt
from cdul_rt.cli import COMMANDS, main

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# flags of other programs that messages tell the user to run
FOREIGN = {"--num-cpus": "ray start", "--no-deps": "pip install", "--model-repository": "tritonserver",
           "--shm-size": "docker run"}


def cli_options() -> set[str]:
    ctx = click.Context(main)
    found: set[str] = set()
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        commands = [cmd, *getattr(cmd, "commands", {}).values()] if cmd is not None else []
        for c in commands:
            for p in c.params:
                found.update(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
    return found


def _strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def error_flags() -> dict[str, list[str]]:
    """flag -> ["module.py:line", ...] for every flag named in a CdulError message."""
    root = Path(cdul_rt.__file__).parent
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assigned: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        assigned.setdefault(t.id, []).extend(_strings(node.value))
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            if not isinstance(node, ast.Call) or getattr(func, "id", getattr(func, "attr", None)) != "CdulError":
                continue
            texts = _strings(node) + [s for n in ast.walk(node) if isinstance(n, ast.Name)
                                      for s in assigned.get(n.id, [])]
            for flag in FLAG.findall(" ".join(texts)):
                found.setdefault(flag, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_scan_sees_the_messages():
    flags = error_flags()
    assert len(flags) > 20  # many messages name options; an empty scan would pass vacuously
    assert "--device" in flags and "--trt-max-images" in flags  # a literal and a hint held in a constant


def test_every_option_an_error_suggests_exists():
    options = cli_options()
    assert {"--engine-dir", "--runtime", "--trt-workspace"} <= options
    missing = {flag: where for flag, where in error_flags().items()
               if flag not in options and flag not in FOREIGN and not (flag.endswith("-") and
                                                                        any(o.startswith(flag) for o in options))}
    assert not missing, f"error messages name options that no cdul-rt command has: {missing}"
