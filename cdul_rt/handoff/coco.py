"""COCO-style JSON with image-level categories, for tools that read COCO.

``images`` (id, file_name, width, height), ``categories`` (id from 1, name) and one ``annotations`` entry per
(image, label) with ``image_id``, ``category_id`` and ``score``, and no ``bbox`` or ``segmentation``: the
labels are image-level. pycocotools' ``COCO`` indexes it (tested) and ``cdul-rt eval --gt`` reads it back.
"""

from __future__ import annotations

import time
from pathlib import Path

from cdul_rt.handoff.common import Handoff, require_images, write_json


def coco_dict(handoff: Handoff) -> dict:
    sizes = handoff.sizes()
    category = {name: j + 1 for j, name in enumerate(handoff.classes)}
    images, annotations = [], []
    for i, path in enumerate(handoff.table.paths):
        width, height = sizes[i] or (0, 0)
        images.append({"id": i + 1, "file_name": path, "width": width, "height": height})
        for name, score in handoff.label_scores(i):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category[name],
                                "score": score, "iscrowd": 0})
    return {"info": {"description": f"image-level labels by {handoff.model_version()}",
                     "date_created": time.strftime("%Y-%m-%d")},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": j, "name": name, "supercategory": ""} for name, j in category.items()]}


def write_coco(handoff: Handoff, out: Path, **_) -> list[Path]:
    require_images(handoff, "coco")  # image sizes are part of the format
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, coco_dict(handoff))
    return [out]
