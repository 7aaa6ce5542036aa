"""Saving ONNX models: atomic writes, ``metadata_props``, external data past protobuf's 2 GiB limit."""

from __future__ import annotations

from pathlib import Path

from cdul_rt.fileio import atomic_path

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
    external = model.ByteSize() > PROTOBUF_LIMIT
    data = path.with_name(path.name + ".data")
    with atomic_path(path) as tmp:
        if external:  # large CLIPs (ViT-bigG) exceed protobuf's limit: weights go to one side file
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name)
        else:
            onnx.save_model(model, str(tmp))
    return [path, data] if external else [path]


def stamp(path: Path, props: dict[str, str], dst: Path | None = None) -> list[Path]:
    """Load ``path``, set its metadata, save it to ``dst`` (default: in place)."""
    import onnx

    model = onnx.load(str(path))
    set_metadata(model, props)
    return save_model(model, dst or path)


def _reads(node) -> list[str]:
    """The tensors a node reads: its inputs, and the outer-scope names its subgraphs (If/Loop/Scan bodies) use."""
    names = list(node.input)
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer} | {o for n in sub.node
                                                                                      for o in n.output}
            names += [x for n in sub.node for x in _reads(n) if x not in local]
    return names


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs (stable otherwise).

    The fp16 converter (keep_io_types) appends its input casts at the end of the node list; onnxruntime, OpenVINO
    and TensorRT's parser accept that, but the ONNX specification, ``onnx.checker`` and shape inference do not.
    Every graph cdul-rt writes is sorted (fp16 conversion, the Triton serving labeler)."""
    import heapq

    from cdul_rt.errors import CdulError

    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    producer = {out: k for k, n in enumerate(nodes) for out in n.output}
    reads = [_reads(n) for n in nodes]
    waiting = [len({producer[x] for x in r if x not in available and x in producer}) for r in reads]
    consumers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        missing = [x for x in reads[k] if x not in available and x not in producer]
        if missing:
            raise CdulError(f"node {n.name or n.op_type} reads undefined tensors {missing[:3]}")
        for p in {producer[x] for x in reads[k] if x not in available and x in producer}:
            consumers.setdefault(p, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)  # smallest original index first: the order is kept wherever it was already valid
    ordered = []
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for c in consumers.get(k, []):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(ordered) != len(nodes):
        raise CdulError(f"graph {graph.name!r} has a cycle; it is not valid ONNX")
    copies = [type(n).FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)
