"""CVAT: the "CVAT for images 1.1" XML with one image-level ``<tag>`` per label.

Layout from CVAT's XML annotation format spec (docs "XML annotation format", version 1.1, annotation mode):
``<annotations><version>1.1</version><meta><task>...<labels>`` then ``<image id name width height>`` elements whose
``<tag label=... source=...>`` children are image-level labels. Upload it to a CVAT task made from the same images
(Actions -> Upload annotations -> "CVAT 1.1"); CVAT matches images by name. Tags carry no score in CVAT.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

from cdul_rt.handoff.common import Handoff, require_images
from cdul_rt.labelfile import display_name


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def cvat_tree(handoff: Handoff, task_name: str) -> ET.ElementTree:
    sizes = handoff.sizes()
    now = time.strftime("%Y-%m-%d %H:%M:%S.000000+00:00", time.gmtime())
    root = ET.Element("annotations")
    _sub(root, "version", "1.1")
    meta = _sub(root, "meta")
    task = _sub(meta, "task")
    for tag, text in (("id", "0"), ("name", task_name), ("size", str(len(handoff.table.paths))),
                      ("mode", "annotation"), ("overlap", "0"), ("bugtracker", ""), ("flipped", "False"),
                      ("created", now), ("updated", now)):
        _sub(task, tag, text)
    labels = _sub(task, "labels")
    for name in handoff.classes:
        label = _sub(labels, "label")
        _sub(label, "name", name)
        _sub(label, "attributes", "")
    _sub(meta, "dumped", now)
    for i, path in enumerate(handoff.table.paths):
        size = sizes[i] or (0, 0)
        # XML cannot hold a non-UTF-8 name: its undecodable bytes are written as \\xNN (as `label` shows them)
        image = _sub(root, "image", id=str(i), name=display_name(path), width=str(size[0]), height=str(size[1]))
        for name, _ in handoff.label_scores(i):
            _sub(image, "tag", label=name, source="auto")
    tree = ET.ElementTree(root)
    ET.indent(tree, "  ")
    return tree


def write_cvat(handoff: Handoff, out: Path, **_) -> list[Path]:
    """Write ``out`` (annotations XML)."""
    require_images(handoff, "cvat")  # image sizes are part of the format
    out.parent.mkdir(parents=True, exist_ok=True)
    cvat_tree(handoff, out.stem).write(out, encoding="utf-8", xml_declaration=True)
    return [out]
