"""``cdul_rt.Labeler``: CDUL pseudo labels, image and text embeddings for images in memory or on disk.

The object ``cdul-rt label`` itself runs (its batch loop calls :meth:`Labeler.score_crops`), so scores from Python
equal the label file's for the same images and options. Torch is imported only by the torch runtime.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cdul_rt.api.inputs import ImageInput, crops_of, image_list, item_error, reason
from cdul_rt.api.results import LabelResult
from cdul_rt.engines.base import EMBEDDING_OUTPUT, LABELER_OUTPUTS
from cdul_rt.errors import CdulError, torch_missing

Errors = Literal["raise", "collect"]
_NOT_SET = ("input", "out", "precision", "overwrite", "workers")  # LabelConfig fields open() does not take


def label_defaults() -> dict[str, Any]:
    """``cdul-rt label``'s option defaults (one source: :class:`cdul_rt.pipeline.LabelConfig`)."""
    from cdul_rt.pipeline import LabelConfig

    out = {}
    for f in dataclasses.fields(LabelConfig):
        if f.name in _NOT_SET:
            continue
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def label_config(options: dict[str, Any]) -> "Any":
    """A validated :class:`~cdul_rt.pipeline.LabelConfig` from :meth:`Labeler.open`'s keyword options (``None``
    = not given): ``label``'s defaults, completed from ``engine_dir``'s manifest as ``label`` does, checked by
    the same rules (:meth:`LabelConfig.check_options`)."""
    from cdul_rt.artifacts.folder import FOLDER_OPTIONS
    from cdul_rt.engines.auto import label_options
    from cdul_rt.pipeline import LabelConfig

    given = {k for k in FOLDER_OPTIONS if options.get(k) is not None}
    if options.get("classes") is not None:
        options = {**options, "classes": classes_option(options["classes"])}
    opts = {**label_defaults(), "precision": None, **{k: v for k, v in options.items() if v is not None}}
    opts = label_options(opts, given)  # the same rule as `cdul-rt label` (engines/auto.py)
    opts["engine_dir"] = str(opts["engine_dir"]) if opts.get("engine_dir") else None
    # no folder: a path that does not exist, so nothing (e.g. runtime auto's probe image search) walks the cwd
    cfg = LabelConfig(input=Path("<python-api: no input folder>"), out=Path("python-api.jsonl"), **opts)
    cfg.check_options()
    return cfg


def classes_option(classes: str | Sequence[str]) -> str:
    """``classes`` as ``label --classes`` takes it: a list of class names becomes the comma list."""
    if isinstance(classes, str):
        return classes
    names = list(classes) if isinstance(classes, (list, tuple)) else None
    if not names or not all(isinstance(c, str) and c.strip() and "," not in c for c in names):
        raise CdulError(f"classes must be a vocabulary name, a text file, 'a,b,c' or a non-empty list of class names "
                        f"without commas, got {classes!r}")
    return ",".join(names)


class Labeler:
    """A CLIP labeler held open: ``label`` images, ``embed_images`` and ``embed_texts``.

    Open it with :meth:`open` (the options of ``cdul-rt label``), use it as a context manager or call
    :meth:`close`. Safe to share between threads: decoding and cropping run in the calling threads, the encoder
    runs one batch at a time (each call already uses all cores or the GPU), so results equal a serial run's.

    Example (the shipped tiny CLIP, offline)::

        >>> import numpy as np
        >>> from cdul_rt import Labeler
        >>> with Labeler.open(model="cdul-tiny", classes="red,green,blue", grid=2) as lab:
        ...     res = lab.label([np.full((40, 60, 3), (220, 30, 30), np.uint8)])
        ...     res.scores.shape, res.embeddings.shape, lab.classes
        ((1, 3), (1, 64), ['red', 'green', 'blue'])
    """

    def __init__(self, session: Any, cfg: Any, vocab: Any, owns_session: bool = False) -> None:
        """Use :meth:`open`; this wraps an already opened :class:`~cdul_rt.engines.session.LabelerSession`
        (``owns_session``: :meth:`close` frees its model too, else it only deactivates the runner)."""
        self._session, self._cfg, self._vocab, self._owns = session, cfg, vocab, owns_session
        self._lock = threading.Lock()
        self._closed = False
        self._runner = session.runner.activate()

    # -- opening and closing ----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, model: str | None = None, *, weights: str | None = None, pretrained: str | None = None,
             classes: str | Sequence[str] | None = None, template: str | None = None,
             engine_dir: str | Path | None = None, runtime: str | None = None, device: str | None = None,
             precision: str | None = None, grid: int | None = None, mode: str | None = None, zeta: float | None = None,
             lam: float | None = None, threshold: float | None = None, top_k: int | None = None,
             batch_size: int | None = None, max_pixels: int | None = None, compile: bool = False,
             jpeg_draft: bool = False, save_parts: bool = False, progress: bool = False,
             ort_tensorrt: bool = False, trt_workspace: float | None = None, trt_typing: str | None = None,
             trt_chunk_images: int | None = None) -> "Labeler":
        """Load a labeler with the options of ``cdul-rt label`` (same names, defaults, checks and errors).

        Args:
            model: open_clip architecture, ``ARCH.TAG``, an open_clip config JSON, or ``cdul-tiny``
                (default ``ViT-B-32``; with ``engine_dir``, the folder's).
            weights: a local CLIP checkpoint file. pretrained: an open_clip tag (``none`` = random weights).
            classes: ``coco``, ``voc``, ``nuswide``, ``synth``, a text file, ``"a,b,c"`` or a list of names
                (default ``coco``; with ``engine_dir``, the vocabulary it was exported with).
            template: prompt template with one ``{}`` (default ``"a photo of the {}"``).
            engine_dir: an exported artifact folder; model, grid, mode, zeta, lam, precision, classes and template
                not given come from its manifest (given ones are checked against it; any vocabulary may be given).
            runtime: ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto``. Default: ``label``'s rule
                (``cdul_rt.engines.auto.choose``: onnxruntime on CPU when installed, else torch; the graph
                runtime when ``engine_dir`` is given). device: ``cpu`` or ``cuda[:N]``.
            precision: ``fp32``, ``bf16``, ``fp16``, ``int8`` (default: the rule's, fp32 on CPU; the folder's).
            grid, mode, zeta, lam: the CDUL crops and aggregation (3, ``cdul``, 0.3, 1.0).
            threshold, top_k: which classes go into ``labels`` (0.5; or the ``top_k`` best).
            batch_size: images per encoder call (8; 64 on CUDA). max_pixels: larger images are refused.
            compile, jpeg_draft: as ``label --compile``, ``--jpeg-draft``.
            ort_tensorrt, trt_workspace, trt_typing, trt_chunk_images: as ``label --ort-tensorrt`` (onnxruntime on
                CUDA) and ``--trt-workspace``, ``--trt-typing``, ``--trt-chunk-images`` (``runtime="tensorrt"``).
            progress: runtime messages and a progress bar for long lists.

        Raises:
            CdulError: a bad option (the message names it and what to do), missing weights or artifacts.
        """
        from cdul_rt.pipeline import open_session
        from cdul_rt.vocab import load_vocabulary

        options = {k: v for k, v in locals().items() if k not in ("cls", "open_session", "load_vocabulary")}
        cfg = label_config(options)
        vocab = load_vocabulary(cfg.classes)
        try:
            session = open_session(cfg, vocab)
        except ModuleNotFoundError as exc:  # a torch-free install asked for the torch runtime or an export
            raise (torch_missing(exc) or exc) from exc
        return cls(session, cfg, vocab, owns_session=True)

    def close(self) -> None:
        """Free the runtime's sessions, model and device memory; the labeler cannot be used afterwards."""
        with self._lock:
            self._closed = True
            if self._owns:
                self._runner.release()
            else:
                self._runner.deactivate()
            for encoder in (self._session.encode_texts, self._session.encode_images):
                getattr(encoder, "close", lambda: None)()
            if self._owns:  # the encoders hold the model (torch) or sessions: let them go
                self._session = dataclasses.replace(self._session, encode_texts=None, encode_images=None)

    def _check_open(self) -> None:
        if self._closed:
            raise CdulError("this Labeler is closed; open a new one with Labeler.open(...)")

    def __enter__(self) -> "Labeler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it is ---------------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """The class names, the column order of every score array."""
        return list(self._vocab.classes)

    @property
    def config(self) -> dict[str, Any]:
        """What a label file's meta records as ``config`` for these options (model, weights hash, runtime, ...)."""
        from cdul_rt.runmeta import recorded_config

        return recorded_config(self._cfg, self._vocab, self._session)

    @property
    def options(self) -> Any:
        """The resolved :class:`~cdul_rt.pipeline.LabelConfig` (defaults and folder values filled in)."""
        return self._cfg

    @property
    def text_embeddings(self) -> np.ndarray:
        """float32 ``[C, D]``: the class prompt embeddings the scores are computed against."""
        return self._session.text_embeddings

    @property
    def runner(self) -> Any:
        """The active labeler runner (its ``dtype`` sets the device crops' dtype for ``label --decode gpu``)."""
        return self._runner

    @property
    def crops_per_image(self) -> int:
        return 1 + self._cfg.grid ** 2

    # -- labeling ---------------------------------------------------------------------------------------------------
    def crops(self, image: ImageInput) -> np.ndarray:
        """uint8 ``[1+g^2, S, S, 3]``: the global view and the tiles of one image, as ``label`` crops it. An unreadable
        image raises a :class:`CdulError` with the reason ``label``'s failures file gives."""
        c = self._cfg
        try:
            return crops_of(image, c.grid, self._session.preprocess, c.max_pixels, c.jpeg_draft)
        except Exception as exc:  # noqa: BLE001 - any decoder failure; serve answers with the same words
            raise CdulError(reason(exc)) from exc

    def score_crops(self, crops: np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """One encoder call on the uint8 crops of whole images, ``[k*(1+g^2), S, S, 3]`` (:meth:`crops`
        concatenated, or a list of such arrays: ``cdul-rt label`` passes its decode-ring slots, uncopied):
        ``S_final``, ``S_global``, ``S_ag`` float32 ``[k, C]`` and ``image_embeddings`` ``[k, D]`` where the runtime
        has them. The runner normalises the uint8 crops where it runs (torch: on its device; others: numpy)."""
        with self._lock:
            self._check_open()
            return self._runner.infer_uint8(crops, self._session.text_embeddings, self._session.preprocess)

    def score_tensor(self, crops: Any) -> dict[str, np.ndarray]:
        """:meth:`score_crops` for crops already normalised in a torch tensor ``[k*(1+g^2), 3, S, S]`` (on the
        runner's device for the torch runtime): ``label --decode gpu`` feeds its device-decoded batches here."""
        from cdul_rt.devicedecode import infer_crops

        with self._lock:
            self._check_open()
            return infer_crops(self._runner, crops, self._session.text_embeddings)

    def label(self, images: Iterable[ImageInput], *, errors: Errors = "raise") -> LabelResult:
        """Pseudo labels for any number of images (paths, bytes, PIL images, HxWx3 uint8 arrays, mixed).

        Batched inside (``batch_size`` images per encoder call, filled as ``cdul-rt label`` fills them).

        Args:
            errors: ``"raise"``: an unreadable image raises a :class:`CdulError` naming it (index, what, why).
                ``"collect"``: it comes back in ``result.errors`` (NaN scores, no labels); the others are labeled.
        """
        self._check_open()
        items = image_list(images)
        _check_errors(errors)
        n, c, d = len(items), len(self._vocab), self._session.text_embeddings.shape[1]
        parts = {k: np.full((n, c), np.nan, np.float32) for k in LABELER_OUTPUTS}
        emb = np.full((n, d), np.nan, np.float32)
        errs: list[str | None] = [None] * n
        has_emb = True
        for idx, out in self._batches(items, errors, errs):
            for k in LABELER_OUTPUTS:
                parts[k][idx] = out[k]
            if EMBEDDING_OUTPUT in out:
                emb[idx] = out[EMBEDDING_OUTPUT]
            else:
                has_emb = False
        result_emb = emb if has_emb else None  # None: a labeler graph exported before it had embeddings
        from cdul_rt.labelfile import select_labels

        cfg = self._cfg
        labels = [[] if e else select_labels(parts["S_final"][i], self.classes, cfg.threshold, cfg.top_k)
                  for i, e in enumerate(errs)]
        return LabelResult(self.classes, parts["S_final"], parts["S_global"], parts["S_ag"], result_emb, labels,
                           errs)

    def _batches(self, items: Sequence[ImageInput], errors: Errors,
                 errs: list[str | None]) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """(item indices, runner outputs) per full batch of readable images, in order."""
        idx: list[int] = []
        crops: list[np.ndarray] = []
        bar = _bar(len(items), self._cfg.progress and len(items) > self._cfg.batch_size)
        for i, item in enumerate(items):
            try:
                crops.append(self.crops(item))
                idx.append(i)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is the item's error
                if errors == "raise":
                    raise item_error(i, item, reason(exc)) from exc
                errs[i] = reason(exc)
            if len(idx) >= self._cfg.batch_size:
                yield idx, self.score_crops(np.concatenate(crops))
                bar.update(len(idx))
                idx, crops = [], []
        if idx:
            yield idx, self.score_crops(np.concatenate(crops))
        bar.close()

    # -- embeddings -------------------------------------------------------------------------------------------------
    def embed_images(self, images: Iterable[ImageInput]) -> np.ndarray:
        """float32 ``[n, D]``, L2-normalised: each image's global view through the visual encoder (what
        ``label`` returns as ``embeddings``, from the same preprocessing). Bad images raise, naming them."""
        self._check_open()
        items = image_list(images)
        if not self.has_visual_encoder:  # e.g. TensorRT: the labeler engine's embeddings (it encodes the tiles too)
            res = self.label(items)
            if res.embeddings is None:
                raise CdulError(f"{self._session.runtime}: this labeler graph was exported by an older cdul-rt "
                                "without image embeddings; re-export the folder with `cdul-rt export`")
            return res.embeddings
        cfg = self._cfg
        out = []
        for start in range(0, len(items), cfg.batch_size):
            views = []
            for i, item in enumerate(items[start:start + cfg.batch_size], start):
                try:
                    views.append(self.global_view(item))
                except Exception as exc:  # noqa: BLE001
                    raise item_error(i, item, reason(exc)) from exc
            out.append(self.embed_views(np.stack(views)))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.embed_dim), np.float32)

    @property
    def has_visual_encoder(self) -> bool:
        """Whether :meth:`embed_views` can run the visual encoder alone (else only the labeler's embeddings)."""
        return self._session.encode_images is not None

    def global_view(self, image: ImageInput) -> np.ndarray:
        """uint8 ``[S, S, 3]``: the global view :meth:`embed_images` encodes (no tiles cut). Raises on bad input."""
        from cdul_rt.preprocess import preprocess_uint8

        pp = self._session.preprocess
        try:
            return preprocess_uint8(_rgb(image, self._cfg, pp.size), pp)
        except Exception as exc:  # noqa: BLE001 - any decoder failure, as CdulError with the failures file's words
            raise CdulError(reason(exc)) from exc

    def embed_views(self, views: np.ndarray) -> np.ndarray:
        """float32 ``[k, D]``, L2-normalised: one visual-encoder call on ``k`` stacked :meth:`global_view` s
        (``cdul-rt serve`` merges the views of concurrent requests into one call)."""
        from cdul_rt.preprocess import normalize_batch

        self._check_open()
        if not self.has_visual_encoder:
            raise CdulError(f"the {self._session.runtime} runtime of this labeler has no separate visual encoder; "
                            "use embed_images (it takes the labeler's embeddings)")
        with self._lock:
            self._check_open()
            return self._session.encode_images(normalize_batch(views, self._session.preprocess))

    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """float32 ``[n, D]``, L2-normalised text embeddings of ``texts`` as given (no template applied).

        torch runtime: the CLIP text tower; onnxruntime / tensorrt: ``text.onnx`` with the torch-free tokenizer.
        """
        self._check_open()
        encode = self._session.encode_texts
        if encode is None:
            raise CdulError(f"the {self._session.runtime} runtime of this labeler has no text encoder (its artifact "
                            "folder has no text.onnx or a tokenizer that needs torch); open it with runtime='torch'")
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise CdulError(f"texts must be strings; text {bad} is {type(texts[bad]).__name__} {texts[bad]!r}")
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        with self._lock:
            self._check_open()
            return np.asarray(encode(texts), dtype=np.float32)

    @property
    def embed_dim(self) -> int:
        """D, the width of every embedding."""
        return int(self._session.text_embeddings.shape[1])


def _rgb(item: ImageInput, cfg: Any, size: int) -> Any:
    """The decoded image ``label`` crops its global view from (same ``--jpeg-draft`` decode)."""
    from cdul_rt.api.inputs import to_rgb

    return to_rgb(item, cfg.max_pixels, (cfg.grid, size) if cfg.jpeg_draft else None)


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "collect"):
        raise CdulError(f"errors must be 'raise' or 'collect', got {errors!r}")


def _bar(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="labeling", unit="img", disable=not show, dynamic_ncols=True)

