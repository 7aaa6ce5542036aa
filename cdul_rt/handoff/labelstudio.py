"""Label Studio: a tasks JSON with ``predictions`` (pre-annotations) and the matching labeling config XML.

Format (Label Studio docs, "Import pre-annotated data"; validated in tests with label-studio-sdk's
``LabelInterface.validate_prediction`` where it installs): a list of tasks ``{"data": {"image": URL},
"predictions": [{"model_version", "score", "result": [{"from_name", "to_name", "type": "choices",
"value": {"choices": [...]}, "score"}]}]}``. A ``choices`` result has one score; as Label Studio's own ML backend
does, it is the mean of the chosen labels' scores, and the per-label scores travel in the task data
(``data.scores``, visible in the Data Manager).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from cdul_rt.errors import CdulError
from cdul_rt.handoff.common import Handoff, mean, write_json

CONTROL, OBJECT = "labels", "image"  # the names the config and every result share


def label_config(classes: list[str]) -> str:
    """The labeling config: the image and a multiple-choice control with one choice per class."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{OBJECT}" value="$image"/>\n'
            f'  <Choices name="{CONTROL}" toName="{OBJECT}" choice="multiple" showInLine="true">\n{choices}\n'
            "  </Choices>\n</View>\n")


def image_url(handoff: Handoff, i: int, image_root: Path | None, url_prefix: str | None) -> str:
    """``--url-prefix`` + relative path, or Label Studio's local-files URL (``/data/local-files/?d=`` + the path
    relative to ``--image-root``, the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; default the image folder)."""
    rel = handoff.table.paths[i]
    if url_prefix:
        return url_prefix.rstrip("/") + "/" + quote(os.fsencode(rel))
    root = image_root or handoff.image_root
    if root is None:
        raise CdulError("Label Studio needs image URLs: pass --url-prefix URL, or --image-root DIR (the server's "
                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), or --images DIR")
    if handoff.image_root is None:  # images not on this machine: take the document root as their folder
        return "/data/local-files/?d=" + quote(os.fsencode(rel))
    path = handoff.image_root / rel
    try:
        local = path.resolve().relative_to(root.resolve())
    except ValueError:
        raise CdulError(f"image {path} is not under --image-root {root}; use the document root Label Studio serves "
                        "local files from") from None
    return "/data/local-files/?d=" + quote(os.fsencode(local.as_posix()))


def task(handoff: Handoff, i: int, url: str, model_version: str) -> dict:
    scores = handoff.label_scores(i)
    result = [{"id": f"r{i}", "from_name": CONTROL, "to_name": OBJECT, "type": "choices",
               "value": {"choices": [c for c, _ in scores]}, "score": mean([s for _, s in scores])}] if scores else []
    return {"data": {"image": url, "path": handoff.table.paths[i], "scores": dict(scores)},
            "predictions": [{"model_version": model_version, "score": mean([s for _, s in scores]),
                             "result": result}]}


def write_label_studio(handoff: Handoff, out: Path, image_root: Path | None = None,
                       url_prefix: str | None = None) -> list[Path]:
    """Write ``out`` (tasks JSON) and ``<out stem>.label_config.xml``; returns both paths."""
    version = handoff.model_version()
    tasks = [task(handoff, i, image_url(handoff, i, image_root, url_prefix), version)
             for i in range(len(handoff.table.paths))]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, tasks, indent=1)
    config = out.with_name(out.stem + ".label_config.xml")
    config.write_text(label_config(handoff.classes), encoding="utf-8")
    return [out, config]
