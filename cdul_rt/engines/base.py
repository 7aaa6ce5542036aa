"""The runner base class: fixed public steps (activate / infer / deactivate), input checks done once for all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdul_rt.errors import CdulError

LABELER_OUTPUTS = ("S_final", "S_global", "S_ag")
# every labeler runner also returns the L2-normalised embedding of each image's global view (float32 [k, D]),
# taken from the same encoder call as the scores: `label --save-embeddings`, `Labeler.embed_images`
EMBEDDING_OUTPUT = "image_embeddings"


def image_embeddings(out: dict[str, np.ndarray], runner: str = "the runner") -> np.ndarray:
    """The ``image_embeddings`` a labeler runner returned, or a clear error for artifacts made before it had them."""
    if EMBEDDING_OUTPUT not in out:
        raise CdulError(f"{runner} returned no image embeddings: its labeler graph was exported by an older cdul-rt "
                        "(scores only); re-export the folder with `cdul-rt export` to get embeddings")
    return out[EMBEDDING_OUTPUT]


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of an input; ``None`` in a shape is a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def check(self, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise CdulError(f"input {self.name!r} must be a numpy array, got {type(array).__name__}")
        if array.dtype != self.dtype:
            raise CdulError(f"input {self.name!r} must be {np.dtype(self.dtype).name}, got {array.dtype.name}")
        if array.ndim != len(self.shape) or any(d is not None and d != a for d, a in zip(self.shape, array.shape)):
            want = "x".join("?" if d is None else str(d) for d in self.shape)
            raise CdulError(f"input {self.name!r} must have shape {want}, got {'x'.join(map(str, array.shape))}")


class BaseRunner:
    """Subclasses implement ``_activate``, ``_infer`` and ``_deactivate``; users call the public steps.

    Usable as a context manager: ``with Runner(...) as r: r.infer(feed)``.
    """

    name = "base"

    def __init__(self) -> None:
        self.is_active = False

    # -- public steps -------------------------------------------------------------------------------------------
    def activate(self) -> "BaseRunner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise CdulError(f"runner {self.name} is not active; call activate() or use it in a `with` block")
        specs = self.input_specs()
        missing = [s.name for s in specs if s.name not in feed]
        extra = sorted(set(feed) - {s.name for s in specs})
        if missing or extra:
            raise CdulError(f"runner {self.name}: missing inputs {missing}, unexpected inputs {extra}")
        for spec in specs:
            spec.check(feed[spec.name])
        self._check_feed(feed)
        return self._infer(feed)

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def release(self) -> None:
        """Deactivate and drop what a later activation would reuse (e.g. torch's cast weights): for good."""
        self.deactivate()
        self._release()

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- for subclasses -----------------------------------------------------------------------------------------
    def input_specs(self) -> list[TensorSpec]:
        raise NotImplementedError  # abstract: every concrete runner defines its inputs

    def _check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Cross-input checks (e.g. crops divisible by 1+g^2); default none."""

    def _activate(self) -> None:
        pass

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError  # abstract

    def _deactivate(self) -> None:
        pass

    def _release(self) -> None:
        """Free what ``_deactivate`` keeps for a cheap re-activation; default nothing."""


class LabelerRunnerMixin:
    """Shared input contract of all fused-labeler runners."""

    crops_per_image: int
    image_size: int
    embed_dim: int

    def input_specs(self) -> list[TensorSpec]:
        s = self.image_size
        return [TensorSpec("crops", np.dtype(np.float32), (None, 3, s, s)),
                TensorSpec("text_embeddings", np.dtype(np.float32), (None, self.embed_dim))]

    def _check_feed(self, feed: dict[str, np.ndarray]) -> None:
        self._check_whole_images(feed["crops"].shape[0])

    def _check_whole_images(self, n: int) -> None:
        if n == 0 or n % self.crops_per_image:
            raise CdulError(f"crops must hold whole images of {self.crops_per_image} crops each, got {n} crops")

    def check_uint8(self, crops) -> list[np.ndarray]:
        """uint8 crops (one ``[N, S, S, 3]`` array or a list of them, e.g. decode-ring slots) as a checked list."""
        if not getattr(self, "is_active", True):
            raise CdulError(f"runner {getattr(self, 'name', '?')} is not active; call activate() or use a `with` block")
        parts = [crops] if isinstance(crops, np.ndarray) else list(crops)
        s = self.image_size
        for p in parts:
            if not isinstance(p, np.ndarray) or p.dtype != np.uint8 or p.ndim != 4 or p.shape[1:] != (s, s, 3):
                got = f"{p.dtype} {'x'.join(map(str, p.shape))}" if isinstance(p, np.ndarray) else type(p).__name__
                raise CdulError(f"uint8 crops must be uint8 Nx{s}x{s}x3, got {got}")
        self._check_whole_images(sum(p.shape[0] for p in parts))
        return parts

    def infer_uint8(self, crops, text_embeddings: np.ndarray, preprocess) -> dict[str, np.ndarray]:
        """uint8 ``[N, S, S, 3]`` crops (an array or a list of arrays) -> the labeler outputs.

        This default normalises with numpy (:func:`~cdul_rt.preprocess.normalize_batch`, already fast) and calls
        :meth:`infer`; runners on an accelerator override it to copy uint8 and normalise on their device.
        """
        from cdul_rt.preprocess import normalize_batch

        parts = self.check_uint8(crops)
        return self.infer({"crops": normalize_batch(parts, preprocess), "text_embeddings": text_embeddings})
