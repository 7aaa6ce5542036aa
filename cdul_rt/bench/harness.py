"""Run the measurements: the fp32 reference, every runtime/precision present, the default path (``label`` without
speed flags, the same as ``--runtime auto``), and the naive loop.

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
from cdul_rt.engines.auto import Candidate
from cdul_rt.errors import CdulError
from cdul_rt.presets import DEFAULT_MODEL

PARITY_TOL = 1e-2  # max |S_final - S_final(fp32 torch)| a row may show and still be called parity-passing
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
    auto: bool = True  # measure the default row (label without speed flags = --runtime auto)
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
    peaks: dict[str, tuple[float, str]]  # precision -> (best GEMM FLOP/s measured in the run, library)
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
    if runtime == "default":  # what `label` runs without speed flags: LabelConfig applies the rule
        runtime, precision = "auto", "auto"
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


def e2e_once(cfg: BenchConfig, label_cfg, session) -> tuple[float, np.ndarray]:
    """Seconds of one whole ``label_folder`` run (fresh output) and the S_final it wrote, in path order."""
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.pipeline import label_folder

    summary = label_folder(label_cfg, session=session)
    if summary.failed or summary.labeled != cfg.images:
        raise CdulError(f"bench run labeled {summary.labeled}/{cfg.images} images ({summary.failed} failed)")
    table = read_label_file(label_cfg.out)
    return summary.seconds, table.scores[np.argsort(table.paths)]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _wanted(cfg: BenchConfig, runtime: str, precision: str, device: str) -> bool:
    return not cfg.only or any(f"{runtime}/{precision}/{device}".startswith(o) for o in cfg.only)


@dataclass
class _Target:
    """One runtime/precision being measured: its open session and the samples collected round by round."""

    runtime: str
    precision: str
    device: str
    session: object = None
    label_cfg: object = None
    status: str = "ok"
    note: str = ""
    encode_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    encode_scores: np.ndarray | None = None
    e2e_scores: np.ndarray | None = None


class _Bench:
    """State shared by the rows of one run: the reference session, the ready crops, the targets.

    Targets are opened and warmed up first, then measured in rounds (one encoder call and one end-to-end run of
    every target per round, and one roofline matmul): on a machine shared with other jobs the load drifts over
    minutes, and interleaving spreads that drift over all rows alike instead of favouring whichever ran in a
    quiet moment.
    """

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
        self.naive_s: list[float] = []
        self.naive_scores: list[np.ndarray] = []

    def open(self, runtime: str, precision: str, device: str) -> _Target:
        """Open and warm up (one encoder call: compiles, fills oneDNN caches) a target, or say why not."""
        t = _Target(runtime, precision, device)
        t.status = unavailable(runtime, precision, device, self.caps) or "ok"
        if t.status != "ok":
            return t
        name = f"labels-{runtime}-{precision}-{device}.jsonl"
        t.label_cfg = _label_config(self.cfg, self.folder, self.cfg.work_dir / name, runtime, precision, device)
        self.cfg.log(f"opening {runtime}/{precision}/{device}")
        start = time.perf_counter()
        try:
            if runtime == "default":  # LabelConfig resolved auto/auto with the rule label uses without flags
                t.precision = t.label_cfg.precision
                chosen = Candidate(t.label_cfg.runtime, t.label_cfg.precision, device)
                t.note = f"label without speed flags (= --runtime auto): {chosen.key}"
                t.session = self._session(chosen, t.label_cfg)
            elif (runtime, precision, device) == ("torch", "fp32", "cpu"):
                t.session = self.reference
            else:
                t.session = self._session(Candidate(t.label_cfg.runtime, precision, device), t.label_cfg)
            opened = time.perf_counter() - start
            if t.label_cfg.runtime == "onnxruntime" and not self.cfg.engine_dir:
                t.note += f"{'; ' if t.note else ''}open {opened:.1f} s (exports to ONNX once when not cached)"
            with t.session.runner as runner:
                encode_once(runner, self.crops, t.session.text_embeddings)
        except CdulError as exc:
            t.status = f"failed: {exc}"
        if t.label_cfg.compile:
            t.note = f"compile + warm-up {time.perf_counter() - start:.0f} s, once per process"
        return t

    def _session(self, cand: Candidate, label_cfg):
        """A session for ``cand``; torch ones share the reference's loaded CLIP (the runner casts a copy)."""
        from cdul_rt.engines.session import LabelerSession
        from cdul_rt.engines.torch.loader import torch_encoders
        from cdul_rt.engines.torch.runner import TorchLabelerRunner

        if cand.runtime != "torch":
            from cdul_rt.pipeline import open_session

            return open_session(label_cfg, self.vocab)  # the cached export found or made first, as `label` does
        ref = self.reference
        runner = TorchLabelerRunner(ref.runner.bundle, grid=label_cfg.grid, aggregation=label_cfg.aggregation,
                                    precision=cand.precision, device=cand.device, compile=label_cfg.compile)
        return LabelerSession(runner, ref.text_embeddings, ref.preprocess, ref.model, ref.weights_hash,
                              cand.precision, "torch", **torch_encoders(ref.runner.bundle, runner))

    def round(self, targets: list[_Target], index: int) -> None:
        cfg = self.cfg
        for t in targets:
            if t.status != "ok":
                continue
            cfg.log(f"round {index + 1}/{cfg.repeats}: {t.runtime}/{t.precision}/{t.device}")
            try:
                if t.runtime != "default":
                    with t.session.runner as runner:
                        sec, t.encode_scores = encode_once(runner, self.crops, t.session.text_embeddings)
                    t.encode_s.append(sec)
                sec, t.e2e_scores = e2e_once(cfg, t.label_cfg, t.session)
                t.e2e_s.append(sec)
            except CdulError as exc:
                t.status = f"failed: {exc}"

    def naive_round(self, index: int, per_round: int) -> None:
        from cdul_rt.bench.peers import run_naive

        n = len(self.paths)
        picks = [self.paths[1 + (index * per_round + i) % (n - 1)] for i in range(per_round)]
        self.cfg.log(f"round {index + 1}/{self.cfg.repeats}: naive open_clip loop ({per_round} images)")
        warmup = [self.paths[0]] if index == 0 else []  # one untimed image warms the loop up, once
        seconds, scores = run_naive(self.reference.runner.bundle, [*warmup, *picks],
                                    self.reference.text_embeddings, self.cfg.work_dir / "labels-naive.jsonl",
                                    self.cfg.grid, warmup=len(warmup), classes=list(self.vocab.classes))
        self.naive_s += seconds
        self.naive_scores += [(self.paths.index(p), s) for p, s in zip(picks, scores)]

    def rows(self, targets: list[_Target]) -> list[Row]:
        ref = targets[0]  # torch fp32
        rows = []
        for t in targets:
            runtime = t.label_cfg.runtime if t.label_cfg is not None else t.runtime  # torch.compile, default: real
            margin = Candidate(runtime, t.precision).within_margin
            if t.status != "ok" and not t.e2e_s:
                scopes = ("e2e",) if t.runtime == "default" else ("encode", "e2e")
                rows += [Row(t.runtime, t.precision, s, t.device, status=t.status, note=t.note, within_margin=margin)
                         for s in scopes]
                continue
            if t.runtime != "default":
                rows.append(Row(t.runtime, t.precision, "encode", t.device, status=t.status, note=t.note,
                                parity=_max_diff(t.encode_scores, ref.encode_scores), within_margin=margin)
                            .measured(throughput(self.k, t.encode_s)))
            rows.append(Row(t.runtime, t.precision, "e2e", t.device, status=t.status,
                            note=t.note, parity=_max_diff(t.e2e_scores, ref.e2e_scores), within_margin=margin)
                        .measured(throughput(self.cfg.images, t.e2e_s)))
        if self.naive_s:
            diff = max(_max_diff(s, ref.e2e_scores[i]) for i, s in self.naive_scores)
            rows.append(Row("naive", "fp32", "e2e", parity=diff,
                            note="open_clip loop: per crop, preprocess + encode_image, batch 1")
                        .measured(per_item(self.naive_s)))
        return rows


def _gemm_round(samples: dict[tuple[str, str], list[float]], n: int, onnxruntime: bool) -> None:
    """One sample of every library's GEMM at every precision it has here (the roofline's candidates)."""
    from cdul_rt.bench.roofline import MATMUL_PRECISIONS, ORT_PRECISIONS, measure_matmul_flops, measure_ort_gemm

    for p in MATMUL_PRECISIONS:
        samples.setdefault(("torch", p), []).append(measure_matmul_flops(p, n, repeats=3))
    if onnxruntime:
        for p in ORT_PRECISIONS:
            try:
                samples.setdefault(("onnxruntime", p), []).append(measure_ort_gemm(p, n, repeats=3))
            except Exception:  # noqa: BLE001 - an onnxruntime build without this kernel: the others still count
                samples.setdefault(("onnxruntime", p), [])


def run_bench(cfg: BenchConfig) -> BenchResult:
    from cdul_rt.bench.roofline import best_peaks, visual_flops_per_crop

    cfg.validate()
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    bench = _Bench(cfg)
    visual = bench.reference.runner.bundle.model.visual
    flops_per_crop = visual_flops_per_crop(visual, bench.reference.preprocess.size)
    wanted = [t for t in TARGETS if t == ("torch", "fp32", "cpu")
              or (_wanted(cfg, *t) and (t[0] != "torch.compile" or cfg.compile))]
    if cfg.auto:
        wanted.append(("default", "auto", "cpu"))
    targets = [bench.open(*t) for t in wanted]
    if targets[0].status != "ok":
        raise CdulError(f"the fp32 torch reference could not run: {targets[0].status}")
    samples: dict[tuple[str, str], list[float]] = {}
    naive = cfg.naive and cfg.naive_images > 0 and cfg.images > 1
    for i in range(cfg.repeats):
        _gemm_round(samples, cfg.matmul_size, bench.caps.onnxruntime)
        bench.round(targets, i)
        if naive:
            bench.naive_round(i, -(-cfg.naive_images // cfg.repeats))
    rows = bench.rows(targets)
    machine["gemm_flops_samples"] = {f"{lib}/{p}": v for (lib, p), v in samples.items()}
    peaks = best_peaks(samples)
    crops_per_image = 1 + cfg.grid**2
    derive(rows, peaks, flops_per_crop * crops_per_image, PARITY_TOL)
    machine["load_avg_after"] = list(os.getloadavg())
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k != "log"}
    return BenchResult(rows, machine, bench.reference.model, flops_per_crop, crops_per_image, peaks, config)
