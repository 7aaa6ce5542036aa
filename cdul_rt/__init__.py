"""cdul-rt: annotation-free multi-label labeling with CLIP (CDUL, ICCV 2023), training and fast engines.

Python API (loaded on first use, so ``import cdul_rt`` stays light and never imports torch)::

    from cdul_rt import Labeler, Classifier
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("Classifier", "ImageInput", "LabelResult", "Labeler", "Prediction", "prepare_crops")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily below
    from cdul_rt.api import Classifier, ImageInput, LabelResult, Labeler, Prediction, prepare_crops  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        import cdul_rt.api

        return getattr(cdul_rt.api, name)
    raise AttributeError(f"module 'cdul_rt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
