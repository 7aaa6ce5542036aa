"""What every export needs: the label table, the label set of each image, the image folder and sizes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdul_rt import __version__
from cdul_rt.aggregation import PARAMS
from cdul_rt.errors import CdulError
from cdul_rt.labelfile import LabelTable, read_label_file


@dataclass
class Handoff:
    table: LabelTable
    labels: list[list[int]]  # class indices per image, highest score first
    image_root: Path | None  # the folder the table's relative paths start from (None: not on this machine)
    _sizes: list[tuple[int, int] | None] | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.table.classes

    def image_path(self, i: int) -> Path:
        rel = self.table.paths[i]
        return Path(rel) if self.image_root is None else self.image_root / rel

    def sizes(self) -> list[tuple[int, int] | None]:
        """(width, height) of every image from its header (None where it cannot be read), read once."""
        if self._sizes is None:
            with ThreadPoolExecutor(4) as pool:
                self._sizes = list(pool.map(_size, (self.image_path(i) for i in range(len(self.table.paths)))))
        return self._sizes

    def model_version(self) -> str:
        """A one-line description of how the labels were made (model, aggregation, tool version)."""
        config = self.table.meta.get("config", {})
        parts = [f"cdul-rt {self.table.meta.get('version', __version__)}"]
        for key in ("mode", "grid", *PARAMS.values(), "runtime", "precision"):  # PARAMS: zeta, lambda
            if key in config:
                parts.append(f"{key} {config[key]}")
        return f"{config.get('model', 'unknown model')}; {', '.join(parts)}"

    def label_scores(self, i: int) -> list[tuple[str, float]]:
        row = self.table.scores[i]
        return [(self.classes[j], round(float(row[j]), 6)) for j in self.labels[i]]


def _size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
            w, h = im.size
    except Exception:  # noqa: BLE001 - unreadable: the writer leaves the size out or says so
        return None
    # the size annotation tools display: after the EXIF rotation, as `label` decodes the image
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_handoff(labels: Path, images: Path | None = None, threshold: float | None = None,
                 top_k: int | None = None) -> Handoff:
    """Read the label file; the label sets use the run's threshold / top-k unless given here (as ``report``)."""
    from cdul_rt.report.data import image_root, label_indices

    table = read_label_file(labels)
    if not table.paths:
        raise CdulError(f"{labels} has no images; label some first")
    labels_idx = label_indices(table.scores, table.classes, table.meta, threshold, top_k)
    return Handoff(table, labels_idx, image_root(labels, images, table.meta)[0])


def write_json(path: Path, obj, indent: int | None = None) -> None:
    """``obj`` as UTF-8 JSON. A path that is not valid UTF-8 (``label`` keeps each undecodable byte as a lone
    surrogate, ``os.fsdecode``) cannot be UTF-8 text: inside a JSON string ``backslashreplace`` writes it as the
    JSON escape ``\\udcXX``, so the file stays valid JSON and ``json.load`` gives back the very name that opens it."""
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")


def require_images(handoff: Handoff, fmt: str) -> Path:
    if handoff.image_root is None:
        raise CdulError(f"--to {fmt} needs the images (their paths or sizes): the label file's recorded input is not "
                        "on this machine; pass --images DIR")
    return handoff.image_root


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0
