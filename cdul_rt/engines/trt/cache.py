"""A folder of built engines, each ``<graph>.<precision>.<gpu>.sm<cc>.trt<version>.plan`` with a ``.json`` beside it
recording its key.

An engine only runs on the TensorRT version and GPU architecture it was built for, was tuned for one GPU model, and
for one graph, precision, profile, workspace limit and optimisation level. The file name carries the GPU model,
compute capability and TensorRT version (:meth:`EngineKey.device_tag`), so machines with different GPUs can share
one folder (a Ray cluster on shared storage) without overwriting each other's engines. The JSON holds the whole
:class:`EngineKey` plus the plan's size and sha256, so a stale or truncated plan is detected before TensorRT sees
it, and rebuilt with a message that says why. Every file is written through a temporary with a unique name and
renamed into place, so concurrent builders never write into the same temporary file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cdul_rt.engines.trt.profiles import EngineKey, describe_mismatch
from cdul_rt.fileio import atomic_write, sha256_file


def plan_stem(kind: str, precision: str, key: EngineKey) -> str:
    """``labeler.fp16.nvidia-a100-sxm4-80gb.sm80.trt10.3.0``: one plan per graph, precision and device."""
    return f"{kind}.{precision}.{key.device_tag()}"


class EngineCache:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def plan_path(self, stem: str) -> Path:
        return self.folder / f"{stem}.plan"

    def meta_path(self, stem: str) -> Path:
        return self.folder / f"{stem}.json"

    def read_meta(self, stem: str) -> dict | None:
        path = self.meta_path(stem)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def lookup(self, stem: str, key: EngineKey) -> tuple[Path | None, str | None]:
        """(plan, None) when a valid engine for ``key`` exists; (None, reason) when one exists but cannot be used;
        (None, None) when there is none."""
        plan, meta = self.plan_path(stem), self.read_meta(stem)
        if not plan.is_file() and meta is None:
            return None, None
        if meta is None or "key" not in meta:
            return None, f"{plan.name} has no readable {self.meta_path(stem).name}"
        if not plan.is_file():
            return None, f"{plan.name} is missing"
        if meta["key"] != key.to_dict():
            return None, describe_mismatch(meta["key"], key.to_dict())
        if plan.stat().st_size != meta.get("plan_bytes") or sha256_file(plan, 1 << 22) != meta.get("plan_sha256"):
            return None, f"{plan.name} is truncated or modified (size/sha256 differ from {self.meta_path(stem).name})"
        return plan, None

    def store(self, stem: str, key: EngineKey, plan: bytes, extra: dict | None = None) -> Path:
        path = self.plan_path(stem)
        atomic_write(path, plan)
        meta = {"key": key.to_dict(), "key_digest": key.digest(), "plan_bytes": len(plan),
                "plan_sha256": hashlib.sha256(plan).hexdigest(), **(extra or {})}
        atomic_write(self.meta_path(stem), json.dumps(meta, indent=2).encode())
        return path

    def others(self, kind: str, precision: str, stem: str) -> list[str]:
        """Device tags of the other engines of this graph and precision in the folder (built for other GPUs)."""
        prefix = f"{kind}.{precision}."
        return sorted(p.name[len(prefix):-len(".plan")] for p in self.folder.glob(f"{prefix}*.plan")
                      if p.name != f"{stem}.plan")

    def check_runtime(self, stem: str, tensorrt_version: str, compute_capability: str) -> str | None:
        """Why the stored engine cannot run here (another TRT version or GPU architecture), or None."""
        meta = self.read_meta(stem)
        if meta is None or "key" not in meta:
            return f"{self.plan_path(stem).name} has no readable {self.meta_path(stem).name}"
        key = meta["key"]
        here = {**key, "tensorrt_version": tensorrt_version, "compute_capability": compute_capability}
        return describe_mismatch(key, here) if here != key else None
