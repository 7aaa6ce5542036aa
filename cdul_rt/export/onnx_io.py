"""Saving ONNX models: atomic writes, ``metadata_props``, external data past protobuf's 2 GiB limit."""

from __future__ import annotations

import os
from pathlib import Path

PROTOBUF_LIMIT = 2_000_000_000


def set_metadata(model, props: dict[str, str]) -> None:
    """Replace the ``cdul_rt.*`` entries of ``model.metadata_props`` with ``props`` (others are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def save_model(model, path: Path) -> list[Path]:
    """Write ``model`` to ``path`` via a temporary name; returns the files written (the graph, maybe its data)."""
    import onnx

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    external = model.ByteSize() > PROTOBUF_LIMIT
    data = path.with_name(path.name + ".data")
    if external:  # large CLIPs (ViT-bigG) exceed protobuf's limit: weights go to one side file
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name)
    else:
        onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
    return [path, data] if external else [path]


def stamp(path: Path, props: dict[str, str], dst: Path | None = None) -> list[Path]:
    """Load ``path``, set its metadata, save it to ``dst`` (default: in place)."""
    import onnx

    model = onnx.load(str(path))
    set_metadata(model, props)
    return save_model(model, dst or path)
