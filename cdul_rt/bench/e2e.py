"""End-to-end folder benchmark for a GPU server (issue 12): one folder of photo-like JPEGs, five contenders, one run.

Rows, all with the same model and weights (``--pretrained none``: load_clip's seeded init, identical in every
process; the parity column checks it):

- ``naive``: per image, PIL, the 1 + g^2 crops through open_clip's own transform, one encode call (fp16 on CUDA);
- ``dataloader``: the loop a competent user writes: a torch ``DataLoader`` (``workers`` processes, open_clip
  transform, ``batch_size`` images per call, pinned memory), fp16 encode on the device, scores, aggregation, JSONL;
- ``label --decode cpu`` and ``label --decode gpu``: the real CLI in a subprocess, so the wall time includes
  start-up (imports, model load); images/s is the labeling rate it records in the label file's meta;
- ``encoder``: the visual encoder alone on device-resident input, ``batch_size * (1 + g^2)`` crops per call.

Parity: S_final max |diff| and top-1 agreement of every contender against the naive loop on the images the naive
loop timed. ``device="cpu"`` is a dry run of every code path at small size (fp32, the ``--decode gpu`` row runs the
device path on CPU tensors in-process, since the CLI refuses ``--decode gpu`` without CUDA).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError


@dataclass
class E2EConfig:
    model: str = "ViT-B-32"
    device: str = "cuda"
    images: int = 2000
    image_size: tuple[int, int] = (640, 480)
    batch_size: int = 64
    workers: int = 14
    naive_images: int = 100
    grid: int = 3
    classes: str = "coco"
    work_dir: Path = Path("bench-work/e2e")
    budget_s: float | None = None  # stop starting contenders (and cut a running CLI) when it is spent

    def __post_init__(self) -> None:
        self.deadline = None if self.budget_s is None else time.perf_counter() + self.budget_s

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    @property
    def precision(self) -> str:
        return "fp16" if self.device.startswith("cuda") else "fp32"


@dataclass
class E2ERow:
    contender: str
    status: str = "ok"
    images: int = 0
    images_per_s: float | None = None  # labeling rate (after start-up)
    wall_s: float | None = None  # including start-up
    wall_images_per_s: float | None = None
    parity_max_abs: float | None = None  # S_final vs the naive loop
    top1_agreement: float | None = None
    note: str = ""


@dataclass
class E2EResult:
    rows: list[E2ERow]
    config: dict
    machine: dict = field(default_factory=dict)


def write_folder(folder: Path, n: int, size: tuple[int, int], threads: int = 8) -> list[Path]:
    """``n`` photo-like JPEGs in parts of 250 (written by threads; PIL encodes without the GIL), sorted."""
    from cdul_rt.bench.images import write_jpeg_folder

    parts = [(folder / f"part_{i:03d}", min(250, n - i * 250), i) for i in range(-(-n // 250))]
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(lambda p: write_jpeg_folder(p[0], p[1], size, seed=p[2]), parts))
    return [p for chunk in done for p in chunk]


def _bundle(cfg: E2EConfig):
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    return load_clip(resolve_model(cfg.model, "none"), device=cfg.device)


def _text(bundle, cfg: E2EConfig) -> np.ndarray:
    from cdul_rt.models import model_key
    from cdul_rt.textcache import text_embeddings
    from cdul_rt.vocab import DEFAULT_TEMPLATE, load_vocabulary

    return text_embeddings(bundle, load_vocabulary(cfg.classes), DEFAULT_TEMPLATE, model_key(bundle))


def _scores(model, x, text, grid: int):
    """S_final ``[k, C]`` numpy from the crops of k images (what every hand-written contender computes)."""
    import torch

    from cdul_rt.aggregation import Aggregation

    emb = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
    s = (model.logit_scale.exp().float() * emb @ text.T).softmax(dim=-1)
    return Aggregation().apply_torch(s.view(-1, 1 + grid * grid, s.shape[-1]))[0]


def _views(path: Path, grid: int):
    from PIL import Image

    from cdul_rt.crops import grid_boxes

    img = Image.open(path).convert("RGB")
    return [img] + [img.crop(box) for box in grid_boxes(img.width, img.height, grid)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def naive(cfg: E2EConfig, bundle, text, paths: list[Path]) -> tuple[E2ERow, np.ndarray]:
    import copy

    import torch

    from cdul_rt.bench.peers import open_clip_preprocess

    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    model = copy.deepcopy(bundle.model).to(cfg.device, dtype).eval()
    transform = open_clip_preprocess(model)
    text_t = torch.from_numpy(text).to(cfg.device)
    finals = []
    t = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            x = torch.stack([transform(v) for v in _views(p, cfg.grid)]).to(cfg.device, dtype)
            finals.append(_scores(model, x, text_t, cfg.grid).cpu().numpy())
    _sync(cfg.device)
    sec = time.perf_counter() - t
    row = E2ERow("naive loop (per image: PIL, open_clip transform, one encode call)", images=len(paths),
                 images_per_s=len(paths) / sec, wall_s=sec, wall_images_per_s=len(paths) / sec)
    return row, np.concatenate(finals)


class _CropsDataset:
    """The Dataset a user writes: PIL, global view + tiles, open_clip's transform, stacked."""

    def __init__(self, paths: list[Path], transform, grid: int) -> None:
        self.paths, self.transform, self.grid = paths, transform, grid

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        return torch.stack([self.transform(v) for v in _views(self.paths[i], self.grid)])


def dataloader(cfg: E2EConfig, bundle, text, paths: list[Path], out: Path) -> tuple[E2ERow, np.ndarray]:
    import copy

    import torch
    from torch.utils.data import DataLoader

    from cdul_rt.bench.peers import open_clip_preprocess

    cuda = cfg.device.startswith("cuda")
    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    model = copy.deepcopy(bundle.model).to(cfg.device, dtype).eval()
    text_t = torch.from_numpy(text).to(cfg.device)
    t = time.perf_counter()  # from here: worker start-up included
    loader = DataLoader(_CropsDataset(paths, open_clip_preprocess(model), cfg.grid), batch_size=cfg.batch_size,
                        num_workers=cfg.workers, pin_memory=cuda)
    finals = []
    with torch.no_grad(), open(out, "w", encoding="utf-8") as f:
        i = 0
        for x in loader:
            x = x.to(cfg.device, non_blocking=True).flatten(0, 1).to(dtype)
            s = _scores(model, x, text_t, cfg.grid).cpu().numpy()
            for row in s:
                f.write(json.dumps({"path": paths[i].name, "scores": row.round(6).tolist()}) + "\n")
                i += 1
            finals.append(s)
    sec = time.perf_counter() - t
    row = E2ERow(f"torch DataLoader ({cfg.workers} workers, open_clip transform, {cfg.batch_size} images per call, "
                 f"{cfg.precision})", images=len(paths), images_per_s=len(paths) / sec, wall_s=sec,
                 wall_images_per_s=len(paths) / sec)
    return row, np.concatenate(finals)


def label_cli(cfg: E2EConfig, folder: Path, decode: str, out: Path) -> tuple[E2ERow, np.ndarray]:
    """``cdul-rt label`` in a fresh process: wall time with start-up; images/s as recorded in the meta."""
    from cdul_rt.labelfile import read_label_file

    # --runtime torch: the same encoder as every other row (the default rule would pick TensorRT/onnxruntime)
    cmd = [sys.executable, "-m", "cdul_rt", "label", str(folder), "--model", cfg.model, "--pretrained", "none",
           "--runtime", "torch", "--classes", cfg.classes, "--device", cfg.device, "--precision", cfg.precision, "--workers",
           str(cfg.workers), "--batch-size", str(cfg.batch_size), "--decode", decode, "--grid", str(cfg.grid),
           "--out", str(out), "--overwrite", "-q"]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.left())
    except subprocess.TimeoutExpired:
        raise CdulError(f"stopped at the end of the time budget ({time.perf_counter() - t:.0f} s)") from None
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise CdulError(f"cdul-rt label --decode {decode} failed: {(r.stderr or r.stdout).strip()[-400:]}")
    return _label_row(f"cdul-rt label --decode {decode}", out, wall, " ".join(cmd[2:])), read_label_file(out)


def label_inprocess(cfg: E2EConfig, folder: Path, out: Path):
    """The ``--decode gpu`` row of a CPU dry run: the device path on CPU tensors, in this process."""
    from cdul_rt.devicedecode import ON_CPU_TENSORS
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.pipeline import LabelConfig, label_folder

    t = time.perf_counter()
    label_folder(LabelConfig(input=folder, out=out, model=cfg.model, pretrained="none", classes=cfg.classes,
                             runtime="torch", device=cfg.device, precision=cfg.precision, workers=cfg.workers, grid=cfg.grid,
                             batch_size=cfg.batch_size, decode=ON_CPU_TENSORS, overwrite=True, progress=False))
    row = _label_row("cdul-rt label --decode gpu", out, time.perf_counter() - t,
                     "dry run: the device path on CPU tensors, in-process (no start-up)")
    return row, read_label_file(out)


def _label_row(name: str, out: Path, wall: float, note: str) -> E2ERow:
    last = json.loads(Path(f"{out}.meta.json").read_text(encoding="utf-8"))["last_run"]
    if last["failed"]:
        raise CdulError(f"{name}: {last['failed']} images failed")
    n = last["labeled"]
    return E2ERow(name, images=n, images_per_s=last["images_per_second"], wall_s=wall, wall_images_per_s=n / wall,
                  note=note)


def encoder(cfg: E2EConfig, bundle, repeats: int = 10) -> E2ERow:
    import copy

    import torch

    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    visual = copy.deepcopy(bundle.model.visual).to(cfg.device, dtype).eval()
    s = bundle.preprocess.size
    x = torch.randn(cfg.batch_size * (1 + cfg.grid ** 2), 3, s, s, device=cfg.device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(3):
            visual(x)
        _sync(cfg.device)
        t = time.perf_counter()
        for _ in range(repeats):
            visual(x)
        _sync(cfg.device)
    sec = (time.perf_counter() - t) / repeats
    return E2ERow(f"visual encoder alone, {cfg.precision}, {x.shape[0]} crops per call, on device",
                  images=cfg.batch_size, images_per_s=cfg.batch_size / sec, note="no decode, no crops")


def _parity(row: E2ERow, ref: np.ndarray, got: np.ndarray) -> None:
    row.parity_max_abs = float(np.abs(ref - got).max())
    row.top1_agreement = float((ref.argmax(1) == got.argmax(1)).mean())


def run_e2e(cfg: E2EConfig, log=lambda msg: None) -> E2EResult:
    """Every row side by side in one run (see the module docstring); a contender that fails becomes a row saying
    why, the others still run."""
    import torch

    from cdul_rt.imageio import iter_images

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise CdulError("the end-to-end GPU benchmark needs a CUDA GPU, and torch sees none here; "
                        "without one, run `cdul-rt bench` (CPU rows) or bench/gpu_bench.py --device cpu (dry run)")
    if cfg.images < 2 or cfg.naive_images < 1:
        raise CdulError("the end-to-end benchmark needs --images >= 2 and at least one naive image")
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    folder = cfg.work_dir / f"photos-{cfg.images}-{cfg.image_size[0]}x{cfg.image_size[1]}"
    t = time.perf_counter()
    write_folder(folder, cfg.images, cfg.image_size)
    paths = list(iter_images(folder))  # the order label files are compared in
    log(f"{len(paths)} JPEGs ready in {time.perf_counter() - t:.0f} s")
    bundle = _bundle(cfg)
    text = _text(bundle, cfg)
    naive_paths = paths[: min(cfg.naive_images, len(paths))]
    log("naive loop")
    row, ref = naive(cfg, bundle, text, naive_paths)
    rows = [row]
    _parity(row, ref, ref)
    n = len(naive_paths)

    def attempt(name: str, fn) -> None:
        log(name)
        if cfg.left() is not None and cfg.left() < 5:
            rows.append(E2ERow(name, status="skipped: time budget spent"))
            return
        try:
            r, got = fn()
        except Exception as exc:  # noqa: BLE001 - a failing contender is data; the others still run
            rows.append(E2ERow(name, status=f"failed: {type(exc).__name__}: {str(exc)[:300]}"))
            return
        if hasattr(got, "scores"):  # a label file: rows in path order
            order = {p: i for i, p in enumerate(got.paths)}
            rel = [p.relative_to(folder).as_posix() for p in naive_paths]
            got = got.scores[[order[r] for r in rel]]
        _parity(r, ref, got[:n])
        rows.append(r)

    attempt("torch DataLoader", lambda: dataloader(cfg, bundle, text, paths, cfg.work_dir / "dataloader.jsonl"))
    attempt("cdul-rt label --decode cpu", lambda: label_cli(cfg, folder, "cpu", cfg.work_dir / "label-cpu.jsonl"))
    if cfg.device.startswith("cuda"):
        attempt("cdul-rt label --decode gpu",
                lambda: label_cli(cfg, folder, "gpu", cfg.work_dir / "label-gpu.jsonl"))
    else:
        attempt("cdul-rt label --decode gpu", lambda: label_inprocess(cfg, folder, cfg.work_dir / "label-gpu.jsonl"))
    log("encoder alone")
    try:
        rows.append(encoder(cfg, bundle))
    except Exception as exc:  # noqa: BLE001
        rows.append(E2ERow("visual encoder alone", status=f"failed: {type(exc).__name__}: {str(exc)[:300]}"))
    machine = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if cfg.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(0)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    return E2EResult(rows, config, machine)


def format_rows(rows: list[E2ERow], markdown: bool = False) -> str:
    from cdul_rt.bench.report import render_table

    head = ("contender", "status", "images", "images/s", "wall s (incl. start-up)", "images/s on wall",
            "S_final max abs diff vs naive", "top-1 vs naive")

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    body = [head] + [(r.contender, r.status, str(r.images), f(r.images_per_s, ".1f"), f(r.wall_s, ".1f"),
                      f(r.wall_images_per_s, ".1f"), f(r.parity_max_abs, ".1e"), f(r.top1_agreement, ".3f"))
                     for r in rows]
    return render_table(body, markdown)
