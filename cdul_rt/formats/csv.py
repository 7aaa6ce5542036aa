"""CSV: ``path,labels,<classes>[,global:<classes>,aggregate:<classes>]``, appended batch by batch.

Labels are ``;``-joined. A name that is not valid UTF-8 is written as its original bytes (``surrogateescape``) and
read back identically. A quoted file name may hold a newline, so a record ends at a newline outside quotes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from cdul_rt.errors import CdulError
from cdul_rt.formats.base import PARTS, Appender, LabelFormat, open_append


def csv_layout(cols: list[str]) -> dict[str, list[str]]:
    """Split a label CSV's score columns into ``{"scores": classes, ["global", "aggregate"]: classes}``.

    Written as ``<classes>`` or ``<classes>, global:<classes>, aggregate:<classes>``; decided by that structure
    (not by ``:`` in a name), so class names may contain ``:``.
    """
    n = len(cols) // 3
    if n and len(cols) == 3 * n and all(cols[k * n + i] == f"{part}:{cols[i]}" for k, part in enumerate(PARTS, 1)
                                        for i in range(n)):
        return {"scores": cols[:n], **{part: cols[:n] for part in PARTS}}
    return {"scores": cols}


def record_end(data: bytes) -> int:
    """Offset just after the last newline that is outside quotes (0 if none): the end of the last whole record.

    ``csv`` quotes any field holding a quote, comma or newline and doubles inner quotes, so a position is inside a
    quoted field exactly when an odd number of quote characters precede it.
    """
    end = data.rfind(b"\n")
    quotes = data.count(b'"', 0, max(end, 0))
    while end >= 0 and quotes % 2:
        prev = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', max(prev, 0), end)
        end = prev
    return end + 1


class CsvAppender(Appender):
    def encode(self, rows: list[dict]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        for row in rows:
            parts = (v for k in PARTS if k in row for v in row[k].values())
            writer.writerow([row["path"], ";".join(row["labels"]), *row["scores"].values(), *parts])
        return buf.getvalue()


class Csv(LabelFormat):
    name, suffix, appendable = "csv", ".csv", True

    def rows(self, path: Path) -> Iterator[dict]:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[:2] != ["path", "labels"]:
                raise CdulError(f"{path} is not a cdul-rt label CSV (expected columns path,labels,<classes>...)")
            layout = csv_layout(header[2:])
            for row in reader:
                if len(row) != len(header):
                    continue
                row_d: dict = {"path": row[0], "labels": [x for x in row[1].split(";") if x]}
                values = iter(row[2:])
                for key, classes in layout.items():
                    row_d[key] = {c: float(v) for c, v in zip(classes, values)}
                yield row_d

    def open(self, path: Path, classes: list[str], save_parts: bool) -> Appender:
        f, new = open_append(path)
        if new:
            header = ["path", "labels", *classes]
            if save_parts:
                header += [f"{k}:{c}" for k in PARTS for c in classes]
            csv.writer(f).writerow(header)
        return CsvAppender(f, classes)

    def done_paths(self, path: Path) -> set[str]:
        if path.stat().st_size == 0:  # a crash cut the header line itself and repair left 0 bytes: start again
            return set()
        return super().done_paths(path)

    def repair(self, path: Path) -> None:
        """Cut off a partly written last record (left by a crash)."""
        if not path.is_file():
            return
        size = path.stat().st_size
        with open(path, "rb+") as f:
            keep = record_end(f.read())
            if keep < size:
                f.truncate(keep)


FORMAT = Csv()
