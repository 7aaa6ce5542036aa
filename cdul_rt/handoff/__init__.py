"""``cdul-rt convert``: hand a label file to annotation tools (Label Studio, CVAT, FiftyOne) or COCO readers.

Each writer takes a :class:`~cdul_rt.handoff.common.Handoff` (the label file, its label sets and the image folder)
and writes the tool's own documented import format; ``FORMATS`` maps ``--to`` names to writers.
"""

from __future__ import annotations

from cdul_rt.handoff.coco import write_coco
from cdul_rt.handoff.common import Handoff, load_handoff
from cdul_rt.handoff.cvat import write_cvat
from cdul_rt.handoff.fiftyone import write_fiftyone
from cdul_rt.handoff.labelstudio import write_label_studio

FORMATS = {"label-studio": write_label_studio, "cvat": write_cvat, "fiftyone": write_fiftyone, "coco": write_coco}

__all__ = ["FORMATS", "Handoff", "load_handoff"]
