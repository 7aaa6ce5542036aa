"""The one exception type of cdul-rt. Messages say what the user should do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CdulError(Exception):
    """A problem the user can fix (bad argument, missing file, offline weights, ...)."""


def did_you_mean(name: str, choices: Iterable[str], what: str, hint: str = "") -> CdulError:
    """Build an "unknown X 'name'; did you mean 'Y'?" error, with difflib suggestions (as in ultralytics)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
    msg = f"unknown {what} {name!r}"
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if hint:
        msg += f" {hint}" if close else f". {hint}"
    return CdulError(msg)


def require(module: str, extra: str):
    """Import an optional dependency or fail with the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CdulError(
            f"{module} is not installed; install it with `pip install 'cdul-rt[{extra}]'`"
        ) from exc


TORCH_PACKAGES = ("torch", "torchvision", "open_clip")


def torch_missing(exc: ModuleNotFoundError) -> CdulError | None:
    """The error for a torch-free install asked to do what needs torch (``None``: another module is missing)."""
    if (exc.name or "").split(".")[0] not in TORCH_PACKAGES:
        return None
    return CdulError(f"this needs {exc.name}, which is not installed here (a torch-free install runs exported "
                     "folders: `label --runtime onnxruntime --engine-dir DIR`, `predict --engine DIR`, "
                     "Labeler.open(engine_dir=DIR), Classifier.open(DIR)); install torch and open_clip_torch for the "
                     "torch runtime, training and export")


def write_error(out, exc: OSError, option: str = "--out") -> CdulError:
    """An OSError met while writing ``out`` (a report, an export) as a message that says what to do."""
    where = exc.filename or out
    return CdulError(f"cannot write {where}: {exc.strerror or exc}; choose an {option} you can write to")
