"""Run-folder files: the per-epoch checkpoint (atomic), the final model, metrics.jsonl."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from cdul_rt.errors import CdulError

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to ``path.partial`` then rename, so a crash never leaves a half-written checkpoint."""
    import torch

    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """``state``: model, optimizer, ytilde, epoch, rng, config, history."""
    atomic_torch_save(state, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    import torch

    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CdulError(f"--resume: no {CHECKPOINT} in {run_dir}; start a new run without --resume")
    try:
        # weights_only=False: the checkpoint holds numpy/python RNG states; it is our own file in the run folder.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CdulError(f"cannot read {path}: {exc}; the run cannot be resumed, start a new one") from exc


def save_model(run_dir: Path, model_state: dict, meta: dict[str, Any]) -> Path:
    """The deployable classifier: state dict plus what ``predict`` and ``export`` need to rebuild it."""
    path = run_dir / MODEL
    atomic_torch_save({"state_dict": model_state, "meta": meta}, path)
    return path


def load_model_file(run_dir: Path) -> dict[str, Any]:
    """``model.pt`` of a finished run, else the latest checkpoint of an unfinished one."""
    import torch

    run_dir = Path(run_dir)
    if (run_dir / MODEL).is_file():
        return torch.load(run_dir / MODEL, map_location="cpu", weights_only=True)
    if (run_dir / CHECKPOINT).is_file():
        ckpt = load_checkpoint(run_dir)
        return {"state_dict": ckpt["model"], "meta": ckpt["meta"]}
    raise CdulError(f"{run_dir} holds no {MODEL} or {CHECKPOINT}; give the --out folder of a `cdul-rt train` run")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the history kept in the checkpoint (so a resumed run has no stale lines)."""
    tmp = run_dir / (METRICS + ".partial")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, run_dir / METRICS)
