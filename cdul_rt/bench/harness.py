"""Run the measurements: the fp32 reference, every runtime/precision present, ``auto``, and the naive loop.

All rows are measured side by side in one process, so their ratios hold even on a machine other jobs share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdul_rt.bench.report import Row, derive
from cdul_rt.bench.stats import per_item, throughput
from cdul_rt.engines.auto import PARITY_TOL, Candidate
from cdul_rt.errors import CdulError
from cdul_rt.presets import DEFAULT_MODEL

# (runtime, precision, device) in table order; fp32 torch first: it is the parity reference.
# "torch.compile" is the torch runtime with --compile (inductor, frozen weights).
TARGETS = (("torch", "fp32", "cpu"), ("torch", "bf16", "cpu"), ("torch.compile", "bf16", "cpu"),
           ("onnxruntime", "fp32", "cpu"), ("onnxruntime", "fp16", "cpu"), ("onnxruntime", "int8", "cpu"),
           ("torch", "fp16", "cuda"), ("tensorrt", "fp16", "cuda"))


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    pretrained: str | None = "none"
    weights: str | None = None
    images: int = 16
    image_size: tuple[int, int] = (640, 480)
    batch_size: int = 8
    workers: int = 2
    repeats: int = 3
    naive_images: int = 3
    classes: str = "coco"
    grid: int = 3
    only: tuple[str, ...] = ()  # "runtime/precision" prefixes to measure (empty: all)
    naive: bool = True
    auto: bool = True
    compile: bool = True  # measure the torch.compile row (compiling takes minutes on a big model)
    work_dir: Path = Path("bench-work")
    engine_dir: Path | None = None
    matmul_size: int = 2048  # n of the n x n roofline matmul (large enough to reach peak on CPUs)
    log: Callable[[str], None] = field(default=lambda msg: None, repr=False)

    def validate(self) -> None:
        for name in ("images", "batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise CdulError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.naive_images < 0:
            raise CdulError("--workers and --naive-images must be >= 0")


@dataclass
class BenchResult:
    rows: list[Row]
    machine: dict
    model: str
    flops_per_crop: int
    crops_per_image: int
    matmul_flops: dict[str, float]
    config: dict

    @property
    def flops_per_image(self) -> int:
        return self.flops_per_crop * self.crops_per_image


def machine_info() -> dict:
    import platform

    import torch

    from cdul_rt.engines.auto import detect

    caps = detect()
    return {"cpu": caps.cpu_name or platform.processor(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "bf16": caps.bf16, "amx": "amx_bf16" in caps.cpu_flags, "int8_vnni": caps.int8, "cuda": caps.cuda,
            "load_avg": list(os.getloadavg())}


def _label_config(cfg: BenchConfig, folder: Path, out: Path, runtime: str, precision: str, device: str):
    from cdul_rt.pipeline import LabelConfig

    compiled = runtime == "torch.compile"
    return LabelConfig(input=folder, out=out, classes=cfg.classes, model=cfg.model, pretrained=cfg.pretrained,
                       weights=cfg.weights, grid=cfg.grid, batch_size=cfg.batch_size, workers=cfg.workers,
                       runtime="torch" if compiled else runtime, precision=precision, device=device,
                       compile=compiled, overwrite=True, progress=False,
                       engine_dir=str(cfg.engine_dir) if cfg.engine_dir else None)


def unavailable(runtime: str, precision: str, device: str, caps) -> str | None:
    """Why a target cannot run here (``None``: it can)."""
    if runtime == "tensorrt" and not caps.tensorrt:
        return "not installed"
    if device == "cuda" and not caps.cuda:
        return "no GPU"
    if runtime == "onnxruntime" and not caps.onnxruntime:
        return "not available"
    return None


def encode_once(runner, crops: np.ndarray, text: np.ndarray) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = runner.infer({"crops": crops, "text_embeddings": text})
    return time.perf_counter() - t, out["S_final"]


def measure_encode(session, crops: np.ndarray, images: int, repeats: int) -> tuple[list[float], np.ndarray]:
    """Seconds per ``runner.infer`` on ready crops of ``images`` images (one warm-up call first)."""
    with session.runner as runner:
        _, scores = encode_once(runner, crops, session.text_embeddings)
        seconds = [encode_once(runner, crops, session.text_embeddings)[0] for _ in range(repeats)]
    return seconds, scores


def measure_e2e(cfg: BenchConfig, label_cfg, session, repeats: int) -> tuple[list[float], np.ndarray]:
    """Seconds of whole ``label_folder`` runs (fresh output each time) and the S_final they wrote."""
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.pipeline import label_folder

    seconds = []
    for _ in range(repeats):
        summary = label_folder(label_cfg, session=session)
        if summary.failed or summary.labeled != cfg.images:
            raise CdulError(f"bench run labeled {summary.labeled}/{cfg.images} images ({summary.failed} failed)")
        seconds.append(summary.seconds)
    table = read_label_file(label_cfg.out)
    order = np.argsort(table.paths)
    return seconds, table.scores[order]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _wanted(cfg: BenchConfig, runtime: str, precision: str, device: str) -> bool:
    return not cfg.only or any(f"{runtime}/{precision}/{device}".startswith(o) for o in cfg.only)


class _Bench:
    """State shared by the rows of one run: the reference session, its scores, the ready crops."""

    def __init__(self, cfg: BenchConfig) -> None:
        from cdul_rt.bench.images import write_jpeg_folder
        from cdul_rt.decode import load_crops
        from cdul_rt.engines.auto import detect
        from cdul_rt.engines.torch.loader import open_labeler as open_torch
        from cdul_rt.preprocess import normalize_batch
        from cdul_rt.vocab import load_vocabulary

        self.cfg, self.caps = cfg, detect()
        w, h = cfg.image_size
        self.folder = cfg.work_dir / f"images-{cfg.images}-{w}x{h}"
        self.paths = write_jpeg_folder(self.folder, cfg.images, cfg.image_size)
        self.vocab = load_vocabulary(cfg.classes)
        self.ref_cfg = _label_config(cfg, self.folder, cfg.work_dir / "labels-torch-fp32-cpu.jsonl",
                                     "torch", "fp32", "cpu")
        self.reference = open_torch(self.ref_cfg, self.vocab)
        pp = self.reference.preprocess
        self.k = min(cfg.batch_size, cfg.images)
        self.crops = normalize_batch(np.concatenate([load_crops(p, cfg.grid, pp).crops for p in self.paths[:self.k]]),
                                     pp)
        self.ref_encode: np.ndarray | None = None
        self.ref_e2e: np.ndarray | None = None

    def rows_for(self, session, runtime: str, precision: str, device: str, label_cfg) -> list[Row]:
        cfg = self.cfg
        cfg.log(f"measuring {runtime}/{precision}/{device}: encoder ({self.k} images x {cfg.repeats})")
        seconds, scores = measure_encode(session, self.crops, self.k, cfg.repeats)
        self.ref_encode = scores if self.ref_encode is None else self.ref_encode
        enc = Row(runtime, precision, "encode", device, parity=_max_diff(scores, self.ref_encode))
        cfg.log(f"measuring {runtime}/{precision}/{device}: end to end ({cfg.images} images x {cfg.repeats})")
        seconds_e2e, scores_e2e = measure_e2e(cfg, label_cfg, session, cfg.repeats)
        self.ref_e2e = scores_e2e if self.ref_e2e is None else self.ref_e2e
        e2e = Row(runtime, precision, "e2e", device, parity=_max_diff(scores_e2e, self.ref_e2e))
        return [enc.measured(throughput(self.k, seconds)), e2e.measured(throughput(cfg.images, seconds_e2e))]

    def target(self, runtime: str, precision: str, device: str) -> list[Row]:
        from cdul_rt.engines.auto import _open_candidate

        why = unavailable(runtime, precision, device, self.caps)
        if why:
            return [Row(runtime, precision, scope, device, status=why) for scope in ("encode", "e2e")]
        name = f"labels-{runtime}-{precision}-{device}.jsonl"
        label_cfg = _label_config(self.cfg, self.folder, self.cfg.work_dir / name, runtime, precision, device)
        try:
            session = (self.reference if (runtime, precision, device) == ("torch", "fp32", "cpu")
                       else _open_candidate(Candidate(label_cfg.runtime, precision, device), label_cfg, self.vocab,
                                            self.reference))
            t = time.perf_counter()
            rows = self.rows_for(session, runtime, precision, device, label_cfg)
            if label_cfg.compile:  # the warm-up call compiled: say what that cost, once per process
                rows[0].note = f"compiling + all runs took {time.perf_counter() - t:.0f} s"
            return rows
        except CdulError as exc:
            return [Row(runtime, precision, scope, device, status=f"failed: {exc}") for scope in ("encode", "e2e")]

    def auto_row(self) -> Row:
        from cdul_rt.engines.auto import open_labeler as open_auto

        cfg = self.cfg
        label_cfg = _label_config(cfg, self.folder, cfg.work_dir / "labels-auto.jsonl", "auto", "auto", "cpu")
        session = open_auto(label_cfg, self.vocab)
        choice = session.auto_choice["chosen"]
        cfg.log(f"measuring auto (chose {choice}): end to end")
        seconds, scores = measure_e2e(cfg, label_cfg, session, cfg.repeats)
        row = Row("auto", session.precision, "e2e", choice.split("/")[-1], parity=_max_diff(scores, self.ref_e2e),
                  note=f"chose {choice}")
        return row.measured(throughput(cfg.images, seconds))

    def naive_row(self) -> Row:
        from cdul_rt.bench.peers import run_naive

        cfg = self.cfg
        n = min(cfg.naive_images, len(self.paths) - 1)
        cfg.log(f"measuring the naive open_clip loop ({n} images, batch of 1 crop)")
        seconds, scores = run_naive(self.reference.runner.bundle, self.paths[:n + 1],
                                    self.reference.text_embeddings, cfg.work_dir / "labels-naive.jsonl",
                                    cfg.grid, warmup=1, classes=list(self.vocab.classes))
        row = Row("naive", "fp32", "e2e", parity=_max_diff(scores, self.ref_e2e[1:n + 1]),
                  note="open_clip loop: per crop, preprocess + encode_image, batch 1")
        return row.measured(per_item(seconds))


def run_bench(cfg: BenchConfig) -> BenchResult:
    from cdul_rt.bench.roofline import MATMUL_PRECISIONS, measure_matmul_flops, visual_flops_per_crop
    from cdul_rt.engines.auto import record_measurements

    cfg.validate()
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    bench = _Bench(cfg)
    visual = bench.reference.runner.bundle.model.visual
    flops_per_crop = visual_flops_per_crop(visual, bench.reference.preprocess.size)
    # the roofline is measured before every target and at the end, and its median used: on a shared machine
    # one measurement can land in a quiet or a busy moment, and the rows are spread over minutes
    samples: dict[str, list[float]] = {p: [] for p in MATMUL_PRECISIONS}

    def roofline() -> None:
        for p in MATMUL_PRECISIONS:
            samples[p].append(measure_matmul_flops(p, cfg.matmul_size))

    rows: list[Row] = []
    for runtime, precision, device in TARGETS:
        if runtime == "torch.compile" and not cfg.compile:
            continue
        if (runtime, precision, device) == ("torch", "fp32", "cpu") or _wanted(cfg, runtime, precision, device):
            roofline()
            rows += bench.target(runtime, precision, device)
    roofline()
    machine["matmul_flops_samples"] = samples
    matmul = {p: float(np.median(v)) for p, v in samples.items()}
    crops_per_image = 1 + cfg.grid**2
    derive(rows, matmul, flops_per_crop * crops_per_image, PARITY_TOL)
    passing = {f"{r.runtime}/{r.precision}/{r.device}": r.images_per_s for r in rows
               if r.scope == "e2e" and r.status == "ok" and r.parity_ok}
    record_measurements(bench.caps, bench.reference.model, passing)
    if cfg.auto:
        rows.append(bench.auto_row())
    if cfg.naive and cfg.naive_images > 0 and cfg.images > 1:
        rows.append(bench.naive_row())
    derive(rows, matmul, flops_per_crop * crops_per_image, PARITY_TOL)
    machine["load_avg_after"] = list(os.getloadavg())
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k != "log"}
    return BenchResult(rows, machine, bench.reference.model, flops_per_crop, crops_per_image, matmul, config)
