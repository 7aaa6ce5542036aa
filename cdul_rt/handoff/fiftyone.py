"""FiftyOne: a ``FiftyOneImageClassificationDataset`` folder (multi-label, with confidences).

Layout from FiftyOne's importer (``fiftyone.utils.data.importers.FiftyOneImageClassificationDatasetImporter``):
``labels.json`` = ``{"classes": [...], "labels": {uuid: [{"label": name, "confidence": score}, ...]}}`` (a list
of targets becomes ``fo.Classifications``) and ``data.json``, the data manifest ``{uuid: absolute image path}``,
so the images stay where they are (nothing is copied). Load with ``fo.Dataset.from_dir(dataset_dir=DIR,
dataset_type=fo.types.FiftyOneImageClassificationDataset, data_path="data.json")`` (the importer's documented
manifest option; its automatic ``data.json`` fallback misses it behind the default ``"data/"``).
"""

from __future__ import annotations

from pathlib import Path

from cdul_rt.handoff.common import Handoff, require_images, write_json


def write_fiftyone(handoff: Handoff, out: Path, **_) -> list[Path]:
    """Write ``out/labels.json`` and ``out/data.json``."""
    require_images(handoff, "fiftyone")  # the manifest points at the images
    uuids = [f"{i:08d}" for i in range(len(handoff.table.paths))]  # unique, unlike file stems in subfolders
    labels = {u: [{"label": c, "confidence": s} for c, s in handoff.label_scores(i)] for i, u in enumerate(uuids)}
    data = {u: str(handoff.image_path(i)) for i, u in enumerate(uuids)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "labels.json", {"classes": handoff.classes, "labels": labels})
    write_json(out / "data.json", data)
    return [out / "labels.json", out / "data.json"]
