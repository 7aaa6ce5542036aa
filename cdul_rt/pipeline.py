"""``cdul-rt label``: discover -> decode + crop (workers) -> fused encode + aggregate (runtime) -> write, resumable."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdul_rt.crops import check_grid
from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, iter_images, relative_name
from cdul_rt.aggregation import DEFAULT_LAM, DEFAULT_ZETA, Aggregation
from cdul_rt.labelfile import LabelWriter, output_format
from cdul_rt.presets import DEFAULT_MODEL
from cdul_rt.runmeta import (RunFiles, check_out_path, check_resume, locked_output, meta_extra, recorded_config,
                              write_run_meta)
from cdul_rt.vocab import DEFAULT_TEMPLATE, Vocabulary, check_template, load_vocabulary


def default_batch_size(device: str) -> int:
    """Images per encoder call: 64 on CUDA (640 crops at g = 3 keep a GPU busy), 8 on the CPU (BENCHMARKS.md,
    batch scaling)."""
    kind = str(device or "cpu").strip().lower().partition(":")[0]
    return 64 if kind in ("cuda", "gpu") else 8


@dataclass
class LabelConfig:
    """Every option of ``cdul-rt label``; the score-affecting ones are recorded and compared on resume."""

    input: Path
    out: Path
    classes: str = "coco"
    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    weights: str | None = None
    template: str = DEFAULT_TEMPLATE
    grid: int = 3
    mode: str = "cdul"
    zeta: float = DEFAULT_ZETA
    lam: float = DEFAULT_LAM
    threshold: float = 0.5
    top_k: int | None = None
    save_parts: bool = False
    batch_size: int | None = None  # None: default_batch_size(device)
    workers: int = 2
    runtime: str = "auto"  # auto = the default rule (engines/auto.py: choose), resolved at construction
    precision: str = "auto"
    device: str = "cpu"
    engine_dir: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    compile: bool = False  # torch runtime: torch.compile the visual encoder (minutes once, then faster)
    ort_tensorrt: bool = False  # onnxruntime on CUDA: the labeler on onnxruntime's TensorRT execution provider
    trt_workspace: float = 4.0  # tensorrt runtime: builder workspace limit in GiB (as `export --trt-workspace`)
    trt_typing: str | None = None  # tensorrt runtime: flag | strong fp16 path (None: TensorRT major's default)
    trt_chunk_images: int | None = None  # tensorrt runtime: images per engine run inside a call (None: 2 chunks)
    jpeg_draft: bool = False  # decode large JPEGs downscaled while every tile stays >= the model input
    decode: str = "auto"  # cpu: worker processes + PIL; gpu: nvJPEG + crops on the device; auto: gpu on CUDA
    save_embeddings: bool = False  # also keep each image's global-view embedding (cdul_rt/embeddings.py)
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = default_batch_size(self.device)
        if self.runtime == "auto" or self.precision == "auto":  # the same rule as `cdul-rt label` without flags
            from cdul_rt.engines.auto import choose

            chosen = choose(self.runtime, self.precision, self.device, self.engine_dir)
            self.runtime, self.precision = chosen.runtime, chosen.precision

    @property
    def aggregation(self) -> Aggregation:
        """``mode``, ``zeta`` and ``lam`` as one checked value (a bad one raises the option's CdulError)."""
        return Aggregation.from_options(self)

    def validate(self) -> None:
        if not self.input.exists():
            raise CdulError(f"input {self.input} does not exist")
        output_format(self.out)
        self.check_options()

    def check_options(self) -> None:
        """The rules for every option but the input and output (shared with ``cdul_rt.Labeler.open``)."""
        self.aggregation  # noqa: B018 - building the value checks mode, zeta and lam
        check_template(self.template)
        check_grid(self.grid)
        if self.batch_size < 1:
            raise CdulError(f"--batch-size must be >= 1 (images per encoder call), got {self.batch_size}")
        check_numbers(self)
        from cdul_rt.devicedecode import check_decode
        from cdul_rt.engines.gpu import parse_device

        self.device = str(parse_device(self.device))  # `gpu` / `CUDA` -> cuda:0, a bad name -> a clear error

        check_decode(self.decode, self.device, self.jpeg_draft)  # --decode gpu without CUDA: refused at once
        self.runtime_options()  # its checks, and another runtime's options refused rather than ignored

    def runtime_options(self):
        """This runtime's own options, typed (:mod:`cdul_rt.engines.request`); options of another runtime that
        were set are refused: they would be ignored."""
        from cdul_rt.engines.request import runtime_options

        return runtime_options(self.runtime, self.device, compile=self.compile, ort_tensorrt=self.ort_tensorrt,
                               trt_workspace=self.trt_workspace, trt_typing=self.trt_typing,
                               trt_chunk_images=self.trt_chunk_images)

    def runtime_request(self):
        """What the runtime receives (:class:`~cdul_rt.engines.request.RuntimeRequest`); ``engine_dir`` as given
        (:func:`cdul_rt.prepare.prepare_request` fills in the cached export)."""
        from cdul_rt.engines.request import RuntimeRequest
        from cdul_rt.presets import ModelRequest

        return RuntimeRequest(self.runtime, ModelRequest(self.model, self.pretrained, self.weights), self.precision,
                              self.device, Path(self.engine_dir) if self.engine_dir else None, self.grid,
                              self.aggregation, self.template, int(self.batch_size),
                              self.runtime_options())


def check_numbers(cfg: LabelConfig) -> None:
    """Numeric options: finite and in range (NaN passes every ``<`` test, so test for the good range)."""
    if not (math.isfinite(cfg.threshold) and 0.0 <= cfg.threshold <= 1.0):
        raise CdulError(f"--threshold must be in [0, 1] (scores are probabilities), got {cfg.threshold}")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise CdulError(f"--top-k must be >= 1, got {cfg.top_k}")
    if cfg.max_pixels < 1:
        raise CdulError(f"--max-pixels must be >= 1 (default {DEFAULT_MAX_PIXELS}), got {cfg.max_pixels}")


@dataclass
class LabelSummary:
    out: Path
    labeled: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # this run's, capped for display
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds > 0 else 0.0

    def add_failure(self, rel: str, reason: str) -> None:
        """Count a failed file; the first 20 are kept for the end-of-run summary."""
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append((rel, reason))


def open_session(cfg: LabelConfig, vocab: Vocabulary):
    """The runtime's session for ``cfg``: its typed request, with the artifact folder found or exported first
    (:func:`cdul_rt.prepare.prepare_request`), then the runtime opens it."""
    from cdul_rt.engines import runtime_module
    from cdul_rt.prepare import prepare_request

    request = prepare_request(cfg)
    return runtime_module(request.runtime).open_labeler(request, vocab)


def label_folder(cfg: LabelConfig, session=None) -> LabelSummary:
    """Label every image under ``cfg.input`` into ``cfg.out``; resumes a previous run of the same config and
    folder, retrying the files that failed. See :mod:`cdul_rt.runmeta` for the lock and the commit point."""
    cfg.validate()
    check_out_path(cfg.out)
    with locked_output(cfg.out):
        return _label_locked(cfg, session)


def _label_locked(cfg: LabelConfig, session) -> LabelSummary:
    vocab = load_vocabulary(cfg.classes)
    session = session or open_session(cfg, vocab)
    from cdul_rt.devicedecode import resolve_decode

    decode_on = resolve_decode(cfg.decode, cfg.device, session.preprocess, cfg.jpeg_draft)
    config = recorded_config(cfg, vocab, session, decode_on)
    if not cfg.overwrite:
        check_resume(cfg.out, cfg.input, config)
    writer = LabelWriter(cfg.out, list(vocab.classes), cfg.threshold, cfg.top_k, cfg.save_parts)
    files = RunFiles(cfg.out, cfg.input, config, cfg.overwrite, meta_extra(cfg))
    writer.before_open = files.commit  # --overwrite removes the old output only here, at the first batch
    skip = set() if cfg.overwrite else writer.existing()  # failed files are not in it: they are retried
    summary = LabelSummary(cfg.out, skipped=len(skip))
    root = cfg.input
    todo = (p for p in iter_images(root) if relative_name(p, root) not in skip)
    start = time.perf_counter()
    writer.open()
    embeddings = None
    if cfg.save_embeddings:
        from cdul_rt.embeddings import EmbeddingWriter

        embeddings = EmbeddingWriter(cfg.out)
    try:
        from cdul_rt.api.labeler import Labeler  # the Python API's object: one decode->score path for both

        with Labeler(session, cfg, vocab) as labeler:
            _run(cfg, session, labeler, todo, writer, files, summary, skip, decode_on, embeddings)
        files.commit()
    finally:
        summary.seconds = time.perf_counter() - start
        if files.committed:  # never leave an output behind a run that changed nothing
            writer.close(finalize=True)
            if embeddings is not None:
                embeddings.finalize()
        files.close()
    write_run_meta(cfg, config, "complete", summary)
    return summary


def progress_bar(cfg: LabelConfig, total: int | None):
    """The labeling progress bar of every front end (on stderr; off without ``cfg.progress``)."""
    from tqdm import tqdm

    return tqdm(desc="labeling", unit="img", total=total, disable=not cfg.progress, dynamic_ncols=True,
                smoothing=0.1)


def _run(cfg, session, labeler, todo, writer, files, summary, writer_skip: set[str],
         decode_on: str | None = None, embeddings=None) -> None:
    """``files``: :class:`cdul_rt.runmeta.RunFiles` (failures log; its commit point precedes any written row)."""
    from cdul_rt.decode import decode_stream

    batch_paths: list[str] = []
    batch_items: list = []  # Decoded, their uint8 crops in decode-ring slots until the runner has consumed them
    root = cfg.input

    def record_failure(rel: str, reason: str) -> None:
        files.add_failure(rel, reason)
        summary.add_failure(rel, reason)
        bar.set_postfix(failed=summary.failed)

    def write(rels: list[str], out: dict) -> None:
        files.commit()  # --overwrite clears the old output here, before this batch's first byte
        if embeddings is not None:  # before the labels: a crash never leaves a labeled image without one
            from cdul_rt.engines.base import image_embeddings

            embeddings.write_batch(rels, image_embeddings(out, f"the {session.runtime} runner"))
        refused = writer.write_batch(rels, out["S_final"], out["S_global"], out["S_ag"])
        for rel, reason in refused:
            record_failure(rel, reason)
        summary.labeled += len(rels) - len(refused)
        bar.update(len(rels))

    def flush() -> None:
        if not batch_paths:
            return
        out = labeler.score_crops([it.crops for it in batch_items])
        for it in batch_items:  # the runner has consumed the crops: their ring slots take the next images
            it.release()
        write(batch_paths, out)
        batch_paths.clear()
        batch_items.clear()

    # a counting pass (paths are not kept) gives the bar a total and an ETA
    total = sum(1 for p in iter_images(root) if relative_name(p, root) not in writer_skip) if cfg.progress else None
    with progress_bar(cfg, total) as bar:
        if decode_on is not None:  # --decode gpu: decode, crop and normalise on the device (cdul_rt.devicedecode)
            from cdul_rt.devicedecode import label_batches

            for batch, out in label_batches(cfg, session, labeler, decode_on, todo):
                for path, reason in batch.failures:
                    record_failure(relative_name(path, root), reason)
                if batch.paths:
                    write([relative_name(p, root) for p in batch.paths], out)
            return
        for item in decode_stream(todo, cfg.grid, session.preprocess, cfg.workers, cfg.max_pixels,
                                  prefetch=max(16, 4 * cfg.workers, cfg.batch_size), jpeg_draft=cfg.jpeg_draft,
                                  hold=cfg.batch_size):
            rel = relative_name(item.path, root)
            if item.crops is None:
                record_failure(rel, item.error or "unknown")
                continue
            batch_paths.append(rel)
            batch_items.append(item)
            if len(batch_paths) >= cfg.batch_size:
                flush()
        flush()
