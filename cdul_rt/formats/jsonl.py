"""JSON Lines (the default): one row per line, appended batch by batch; also the journal of the finalised formats.

A name that is not valid UTF-8 is carried as ``\\udcXX`` escapes (``json`` writes them itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from cdul_rt.errors import CdulError
from cdul_rt.formats.base import Appender, LabelFormat, open_append


class JsonlAppender(Appender):
    def encode(self, rows: list[dict]) -> str:
        return "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)


class Jsonl(LabelFormat):
    name, suffix, appendable = "jsonl", ".jsonl", True

    def rows(self, path: Path) -> Iterator[dict]:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise CdulError(f"{path}:{n} is not valid JSON ({exc})") from exc

    def open(self, path: Path, classes: list[str], save_parts: bool) -> Appender:
        return JsonlAppender(open_append(path)[0], classes)

    def repair(self, path: Path) -> None:
        """Cut off a partly written last line (a crash can also leave a line cut before its newline only: be
        strict, drop a trailing line that does not parse)."""
        if not path.is_file():
            return
        size = path.stat().st_size
        with open(path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep > 0:
                start = data.rfind(b"\n", 0, keep - 1) + 1
                try:
                    json.loads(data[start:keep])
                except ValueError:
                    keep = start
            if keep < size:
                f.truncate(keep)


FORMAT = Jsonl()
