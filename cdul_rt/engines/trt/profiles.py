"""Optimization profiles and engine cache keys for TensorRT builds: pure functions, no tensorrt import.

A TensorRT engine built from a graph with dynamic dimensions needs one optimization profile: a (min, opt, max) shape
per dynamic input. Users think in images, the graphs think in crops: one image is ``1 + g^2`` crops (global view +
g x g snippets) and the fused batch of k images is ``k * (1 + g^2)`` crops, so profiles are given in images and
converted here. Class counts (the labeler's ``text_embeddings`` rows, the text encoder's prompts) get their own range.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from cdul_rt.errors import CdulError

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

# Which count the leading (dynamic) dimension of an input holds, by input name. The fused-labeler contract fixes
# ``crops`` and ``text_embeddings``; the other names are those of the exported encoders and the classifier.
INPUT_UNITS = {
    "crops": "crops",
    "text_embeddings": "classes",
    "tokens": "classes",
    "text": "classes",
    "input_ids": "classes",
    "images": "images",
    "image": "images",
    "pixel_values": "images",
}
# labeler_images: the Triton serving variant of the labeler, whose crops are [images, 1+g^2, 3, S, S];
# visual_crops: Triton's visual encoder, batched by crops (a request may hold a single crop), so its profile
# starts at 1 crop rather than at one image of 1+g^2 crops
GRAPH_KINDS = ("visual", "labeler", "text", "classifier", "labeler_images", "visual_crops")


@dataclass(frozen=True)
class ProfileSpec:
    """An optimization profile in user units: images per encoder call and classes per vocabulary.

    Defaults: opt = 8 images (the labeling default ``--batch-size``), max = 32 images (320 crops of 224 px are
    ~190 MB of fp32 input; larger batches gain little on a GPU that is already saturated), classes up to 1024.
    ``opt_classes`` is the vocabulary the engine is tuned for (the exported one, e.g. 80 for COCO).
    """

    min_images: int = 1
    opt_images: int = 8
    max_images: int = 32
    min_classes: int = 1
    opt_classes: int = 80
    max_classes: int = 1024

    def validate(self) -> "ProfileSpec":
        for what, lo, mid, hi in (("images", self.min_images, self.opt_images, self.max_images),
                                  ("classes", self.min_classes, self.opt_classes, self.max_classes)):
            if not 1 <= lo <= mid <= hi:
                hint = "--trt-opt-images and --trt-max-images" if what == "images" else "--trt-max-classes"
                raise CdulError(f"optimization profile needs 1 <= min <= opt <= max {what}, got {lo}/{mid}/{hi}; "
                                f"set `cdul-rt export` {hint} accordingly")
        return self

    def counts(self, unit: str, grid: int) -> tuple[int, int, int]:
        """(min, opt, max) of a leading dimension measured in ``unit`` (crops, images or classes)."""
        if unit == "crops":
            per = 1 + grid * grid
            return self.min_images * per, self.opt_images * per, self.max_images * per
        if unit == "single_crops":  # any number of crops from 1, up to the same maximum as whole images
            per = 1 + grid * grid
            return 1, self.opt_images * per, self.max_images * per
        if unit == "images":
            return self.min_images, self.opt_images, self.max_images
        if unit == "classes":
            return self.min_classes, self.opt_classes, self.max_classes
        raise CdulError(f"unknown profile unit {unit!r}")


def input_unit(graph: str, name: str) -> str:
    """The unit of an input's leading dimension; the classifier's only input is whole images whatever its name."""
    if graph not in GRAPH_KINDS:
        raise CdulError(f"unknown graph kind {graph!r}; expected one of {', '.join(GRAPH_KINDS)}")
    if graph in ("classifier", "labeler_images"):
        return "images"
    if graph == "text":
        return "classes"
    if graph == "visual_crops":
        return "single_crops"
    unit = INPUT_UNITS.get(name)
    if unit is None:
        raise CdulError(f"{graph} graph input {name!r} has a dynamic leading dimension of unknown meaning; "
                        f"known inputs: {', '.join(sorted(INPUT_UNITS))}")
    return unit


def profile_shapes(graph: str, inputs: dict[str, tuple], spec: ProfileSpec, grid: int) -> ProfileShapes:
    """Profile shapes for every input of a graph.

    ``inputs`` maps input names to their ONNX shapes, where a dynamic dimension is ``None`` (or a symbolic name).
    Only the leading dimension may be dynamic: every other one must be fixed in the graph (S, 3, D, context length),
    since the engine is tuned for exact sizes there.
    """
    spec.validate()
    if grid < 1:
        raise CdulError(f"grid must be >= 1, got {grid}")
    shapes: ProfileShapes = {}
    for name, dims in inputs.items():
        dims = tuple(dims)
        if not dims:
            raise CdulError(f"{graph} input {name!r} is a scalar; a batch dimension is expected")
        rest = dims[1:]
        if any(not isinstance(d, int) or d < 1 for d in rest):
            raise CdulError(f"{graph} input {name!r} has shape {dims}: only the leading dimension may be dynamic; "
                            "re-export the ONNX graph with fixed image size and embedding width")
        if isinstance(dims[0], int) and dims[0] > 0:  # static input (e.g. the labeler's zeta [1]): as it is
            shapes[name] = (dims, dims, dims)
            continue
        lo, mid, hi = spec.counts(input_unit(graph, name), grid)
        shapes[name] = ((lo, *rest), (mid, *rest), (hi, *rest))
    return shapes


def shapes_to_json(shapes: ProfileShapes) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in triple] for name, triple in sorted(shapes.items())}


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine is tied to. A built engine only runs on the TensorRT version and GPU architecture it
    was built with, is tuned for one GPU model (its tactics were timed there), and only for the graph, precision,
    shape ranges, workspace limit and builder optimisation level it was built with."""

    onnx_sha256: str
    tensorrt_version: str
    compute_capability: str  # "8.6", "9.0", ...
    precision: str  # fp32 | fp16
    typing: str  # "flag" (TRT 10 BuilderFlag.FP16) | "strong" (strongly typed network from an fp16 graph) | "none"
    profile: dict  # shapes_to_json(...)
    gpu: str = ""  # device name, e.g. "NVIDIA A100-SXM4-80GB": tactics timed on one model may be slow on another
    workspace_bytes: int = 0
    builder_optimization_level: int | None = None  # None: TensorRT's default (3)

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def to_dict(self) -> dict:
        return asdict(self)

    def device_tag(self) -> str:
        """What a plan file is named by besides graph and precision: GPU model, compute capability and TensorRT
        version, so engines for several GPUs (a Ray cluster sharing one folder) live side by side."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        return f"{gpu}.sm{self.compute_capability.replace('.', '')}.trt{self.tensorrt_version}"


KEY_FIELDS = ("onnx_sha256", "tensorrt_version", "compute_capability", "gpu", "precision", "typing", "profile",
              "workspace_bytes", "builder_optimization_level")


def describe_mismatch(old: dict, new: dict) -> str:
    """Human-readable reason why a cached engine cannot be reused, e.g. "tensorrt_version 10.3.0 -> 10.5.0"."""
    diffs = []
    for field in KEY_FIELDS:
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if field == "onnx_sha256":
            diffs.append(f"ONNX graph changed ({str(a)[:12]} -> {str(b)[:12]})")
        elif field == "profile":
            diffs.append("optimization profile changed")
        else:
            diffs.append(f"{field.replace('_', ' ')} {a} -> {b}")
    return "; ".join(diffs) if diffs else "no difference"
