"""Run-folder files: the per-epoch checkpoint (atomic), the final model, metrics.jsonl."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_path, atomic_write

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain Python values only, so the checkpoint loads with
    ``torch.load(weights_only=True)`` (numpy's state array is stored as a tensor, not a pickled ndarray)."""
    import torch

    key, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"key": str(key), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n, p = state["numpy"], state["python"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def plain(obj: Any) -> Any:
    """Tensors, dicts, lists, tuples, str, int, float, bool and None only (numpy scalars and arrays, paths
    converted): what ``weights_only=True`` loads without running any code."""
    import torch

    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def safe_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only; a file carrying Python callables (code that
    unpickling would run) is refused with a message, never executed."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CdulError(f"refusing to load {path}: it holds Python objects other than tensors and plain data "
                        f"({str(exc).splitlines()[-1][:200]}), which loading would execute. cdul-rt writes {what} "
                        "with tensors and plain data only, so this file was made by something else (or by an older "
                        "cdul-rt); only open run folders you trust, or train again") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged file: say which and what to do
        raise CdulError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:300]}; {what} is damaged") from exc


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to ``path.partial`` then rename, so a crash never leaves a half-written checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """``state``: model, optimizer, ytilde, epoch, rng, config, history (made plain: see :func:`plain`)."""
    atomic_torch_save(plain(state), run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CdulError(f"--resume: no {CHECKPOINT} in {run_dir}; start a new run without --resume")
    return safe_load(path, "the checkpoint")


def save_model(run_dir: Path, model_state: dict, meta: dict[str, Any]) -> Path:
    """The deployable classifier: state dict plus what ``predict`` and ``export`` need to rebuild it."""
    path = run_dir / MODEL
    atomic_torch_save(plain({"state_dict": model_state, "meta": meta}), path)
    return path


def load_model_file(run_dir: Path) -> dict[str, Any]:
    """``model.pt`` of a finished run, else the latest checkpoint of an unfinished one."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL).is_file():
        return safe_load(run_dir / MODEL, "the model")
    if (run_dir / CHECKPOINT).is_file():
        ckpt = load_checkpoint(run_dir)
        return {"state_dict": ckpt["model"], "meta": ckpt["meta"]}
    raise CdulError(f"{run_dir} holds no {MODEL} or {CHECKPOINT}; give the --out folder of a `cdul-rt train` run")


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the history kept in the checkpoint (so a resumed run has no stale lines)."""
    atomic_write(run_dir / METRICS, "".join(json.dumps(row) + "\n" for row in history))
