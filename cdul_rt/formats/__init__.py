"""Label-file formats as one table: ``FORMATS`` maps a file suffix to its format object.

Each format is one small module defining a :class:`~cdul_rt.formats.base.LabelFormat` (append or finalise rows,
read them back as rows or a table, resume: done paths and torn-tail repair, where ``--save-embeddings`` rows go).
``label`` (through :class:`cdul_rt.labelfile.LabelWriter`), the Ray shards, ``train``'s and ``eval``'s readers and
``convert`` all look formats up here, so a new format is a new module plus one line below.
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.errors import CdulError
from cdul_rt.formats import csv, jsonl, npz, parquet
from cdul_rt.formats.base import PARTS, LabelFormat, LabelTable

FORMATS: dict[str, LabelFormat] = {f.suffix: f for f in (jsonl.FORMAT, csv.FORMAT, parquet.FORMAT, npz.FORMAT)}
JOURNAL = jsonl.FORMAT  # where the rows of a format that cannot be appended to stream during a run


def label_format(path: str | Path) -> LabelFormat:
    """The format of a label file, from its suffix."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CdulError(f"unknown output format {path.suffix!r} for {path}; use one of {', '.join(FORMATS)}")
    return fmt


def format_named(name: str) -> LabelFormat:
    """A format by its name (``"jsonl"``, ``"csv"``, ...)."""
    for fmt in FORMATS.values():
        if fmt.name == name:
            return fmt
    raise CdulError(f"unknown label format {name!r}; use one of {', '.join(f.name for f in FORMATS.values())}")


__all__ = ["FORMATS", "JOURNAL", "PARTS", "LabelFormat", "LabelTable", "format_named", "label_format"]
