"""GPU check driver (run by ``bench/gpu_check.sh``): environment, GPU tests, GPU benchmark -> one JSON report.

Each section records ``ok`` / ``skipped: why`` / ``failed: error`` and never stops the others, so a machine without
onnxruntime-gpu or TensorRT still gets the torch numbers. Nothing is installed and nothing is downloaded: the model
is ViT-B-32 with random weights (the speed of a network does not depend on its weights' values).

End-to-end folder section (issue 12, :mod:`cdul_rt.bench.e2e`): photo-like 640x480 JPEGs, then in one run the naive
loop, a torch DataLoader peer, ``cdul-rt label --decode cpu`` and ``--decode gpu`` (subprocesses: wall time includes
start-up) and the encoder alone; images/s and parity against the naive loop.

Benchmark rows: the fused labeler (crops of k images + 80 class embeddings -> S_final, host arrays in and out) for
torch CUDA fp32 / fp16, onnxruntime CUDA EP, and native TensorRT fp16 (each call as one chunk and as two chunks whose
copies overlap compute, side by side: the overlap's measured effect); plus the visual encoder alone on device for
torch eager, CUDA graphs and torch.compile. Parity: S_final max |diff| and top-1 agreement against torch CUDA fp32.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["torch", "open_clip", "numpy", "PIL", "click", "tqdm", "pyarrow", "pytest", "onnx", "onnxruntime",
            "tensorrt", "cuda.bindings", "cuda", "pycuda"]


class Report:
    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget = time.perf_counter(), budget_s
        self.data: dict = {"sections": {}, "bench": [], "parity": []}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def section(self, name: str, fn, *args, need_s: float = 0.0):
        if self.left() < need_s:
            self.data["sections"][name] = f"skipped: {self.left():.0f}s of the time budget left, needs ~{need_s:.0f}s"
            return None
        t = time.perf_counter()
        try:
            out = fn(*args)
            self.data["sections"][name] = "ok" if out is not False else "skipped"
            return out
        except SkipSection as exc:
            self.data["sections"][name] = f"skipped: {exc}"
        except Exception as exc:  # noqa: BLE001 - a failing section is data, the others still run
            self.data["sections"][name] = f"failed: {type(exc).__name__}: {str(exc)[:400]}"
            self.data.setdefault("tracebacks", {})[name] = traceback.format_exc()[-3000:]
        finally:
            self.data.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
        return None


class SkipSection(Exception):
    pass


def packages() -> dict:
    import warnings

    found = {}
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
            with warnings.catch_warnings():  # click 8.2+ deprecates __version__
                warnings.simplefilter("ignore")
                found[name] = str(getattr(mod, "__version__", "present"))
        except Exception as exc:  # noqa: BLE001
            found[name] = f"missing ({type(exc).__name__})"
    return found


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count())
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        info["nvidia_smi"] = "not found"
    return info


def run_tests(timeout_s: float) -> dict:
    if importlib.util.find_spec("pytest") is None:
        raise SkipSection("pytest is not installed")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or trt", "-rs", "tests"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    tail = (r.stdout + r.stderr).strip().splitlines()
    return {"command": " ".join(cmd[1:]), "exit_code": r.returncode, "summary": tail[-1] if tail else "",
            "output_tail": "\n".join(tail[-40:])}


def timed(fn, warmup: int, repeat: int, sync=None) -> list[float]:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t)
    return out


def row(report: Report, runtime: str, precision: str, variant: str, images: int, secs: list[float]) -> None:
    med = statistics.median(secs)
    report.data["bench"].append({
        "runtime": runtime, "precision": precision, "variant": variant, "images_per_call": images,
        "crops_per_call": images * 10, "ms_per_call": round(med * 1e3, 3),
        "ms_per_image": round(med * 1e3 / images, 4), "images_per_s": round(images / med, 1),
        "spread_ms": round((max(secs) - min(secs)) * 1e3, 3), "repeats": len(secs)})


def parity(report: Report, name: str, ref: dict, got: dict) -> None:
    diff = float(np.abs(ref["S_final"] - got["S_final"]).max())
    top1 = float((ref["S_final"].argmax(1) == got["S_final"].argmax(1)).mean())
    report.data["parity"].append({"path": name, "S_final_max_abs": diff, "top1_agreement": top1})


class Bench:
    def __init__(self, report: Report, images: int, model: str, device: str = "cuda") -> None:
        self.r, self.images, self.model, self.device = report, images, model, device
        self.ref: dict | None = None
        self.work = Path(tempfile.mkdtemp(prefix="cdul-gpu-check-"))

    def feed(self, size: int, dim: int) -> dict:
        rng = np.random.default_rng(0)
        text = rng.normal(size=(80, dim)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        return {"crops": rng.normal(size=(self.images * 10, 3, size, size)).astype(np.float32),
                "text_embeddings": text}

    def torch_runtime(self) -> None:
        import torch

        from cdul_rt.engines.torch.runner import TorchLabelerRunner
        from cdul_rt.models import load_clip
        from cdul_rt.presets import resolve_model

        cuda = self.device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise SkipSection("torch sees no CUDA device")
        self.bundle = load_clip(resolve_model(self.model, "none"))
        self.dim = int(self.bundle.config["embed_dim"])
        self.size = self.bundle.preprocess.size
        feed = self.feed(self.size, self.dim)
        low = "fp16" if cuda else "bf16"  # --device cpu: a dry run of this script's code paths
        for precision in ("fp32", low):
            with TorchLabelerRunner(self.bundle, precision=precision, device=self.device) as runner:
                out = runner.infer(feed)
                row(self.r, "torch", precision, "labeler, host in/out", self.images,
                    timed(lambda: runner.infer(feed), 3, 10, torch.cuda.synchronize if cuda else None))
            if precision == "fp32":
                self.ref = out
            else:
                parity(self.r, f"torch {self.device} {low}", self.ref, out)

    def torch_graphs(self) -> None:
        """The visual encoder alone, on device: eager vs CUDA graphs (captured by hand) vs torch.compile."""
        import copy

        import torch

        if not torch.cuda.is_available():
            raise SkipSection("no CUDA")
        visual = copy.deepcopy(self.bundle.model.visual).half().cuda().eval()
        x = torch.randn(self.images * 10, 3, self.size, self.size, device="cuda", dtype=torch.float16)
        sync = torch.cuda.synchronize
        with torch.inference_mode():
            row(self.r, "torch", "fp16", "visual eager, on device", self.images, timed(lambda: visual(x), 3, 20, sync))
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    visual(x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = visual(x)
            row(self.r, "torch", "fp16", "visual CUDA graph, on device", self.images,
                timed(graph.replay, 3, 20, sync))
            assert torch.allclose(y.float(), visual(x).float(), atol=1e-2)

    def torch_compile(self) -> None:
        import copy

        import torch

        visual = copy.deepcopy(self.bundle.model.visual).half().cuda().eval()
        x = torch.randn(self.images * 10, 3, self.size, self.size, device="cuda", dtype=torch.float16)
        compiled = torch.compile(visual, mode="max-autotune-no-cudagraphs", dynamic=False)
        with torch.inference_mode():
            t = time.perf_counter()
            compiled(x)
            torch.cuda.synchronize()
            self.r.data.setdefault("notes", []).append(f"torch.compile warm-up {time.perf_counter() - t:.1f}s")
            row(self.r, "torch", "fp16", "visual torch.compile, on device", self.images,
                timed(lambda: compiled(x), 3, 20, torch.cuda.synchronize))

    def export(self, precision: str) -> Path:
        from cdul_rt.export.clip import ExportOptions, export_clip

        out = self.work / f"export-{precision}"
        if not (out / "manifest.json").is_file():
            export_clip(ExportOptions(out=out, model=self.model, pretrained="none", classes="coco",
                                      precision=precision), log=lambda m: None, bundle=self.bundle)
        return out

    def onnxruntime_cuda(self) -> None:
        import onnxruntime as ort

        from cdul_rt.aggregation import Aggregation
        from cdul_rt.engines.gpu import ORT_CUDA, ort_providers

        if self.device.startswith("cuda") and ORT_CUDA not in ort.get_available_providers():
            raise SkipSection("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        folder = self.export("fp32")
        feed = {**self.feed(self.size, self.dim), **Aggregation().graph_feeds()}
        sess = ort.InferenceSession(str(folder / "labeler.onnx"),
                                    providers=ort_providers(self.device, "fp32", use_tensorrt=False))
        names = [i.name for i in sess.get_inputs()]
        run = lambda: sess.run(["S_final"], {n: feed[n] for n in names})  # noqa: E731
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        parity(self.r, f"onnxruntime {kind} fp32", self.ref, {"S_final": run()[0]})
        row(self.r, f"onnxruntime-{kind}", "fp32", "labeler, host in/out", self.images, timed(run, 3, 10))

    def tensorrt(self) -> None:
        if not self.device.startswith("cuda"):
            raise SkipSection("TensorRT needs --device cuda")
        try:
            import tensorrt
        except Exception as exc:  # noqa: BLE001
            raise SkipSection(f"TensorRT not importable ({type(exc).__name__})") from exc
        from cdul_rt.aggregation import Aggregation
        from cdul_rt.engines.trt.profiles import ProfileSpec
        from cdul_rt.engines.trt.runner import TrtLabelerRunner
        from cdul_rt.engines.trt.build import TrtBuildConfig, build_engines

        major = int(tensorrt.__version__.split(".")[0])
        folders = [self.export("fp32")] + ([self.export("fp16")] if major >= 11 else [])
        cfg = TrtBuildConfig(precision="fp16", profile=ProfileSpec(1, self.images, max(self.images, 16), 1, 80, 1024))
        logs: list[str] = []
        t = time.perf_counter()
        (built,) = build_engines(folders[0], self.work / "trt", ("labeler",), cfg, extra_dirs=tuple(folders[1:]),
                                 log=logs.append)
        self.r.data.setdefault("notes", []).extend(logs + [f"TensorRT {tensorrt.__version__} build "
                                                           f"{time.perf_counter() - t:.1f}s"])
        feed = self.feed(self.size, self.dim)
        # copy/compute overlap, measured side by side: the whole call as one chunk (nothing to overlap) against
        # the runner's default of two chunks (the second chunk's upload runs under the first chunk's compute)
        times = {}
        for label, chunk in (("1 chunk, no overlap", self.images), ("2 chunks, copy/compute overlap", None)):
            with TrtLabelerRunner(built.plan, grid=3, image_size=self.size, embed_dim=self.dim,
                                  **Aggregation().numbers(), chunk_images=chunk) as runner:
                parity(self.r, f"tensorrt fp16 ({label})", self.ref, runner.infer(feed))
                times[label] = timed(lambda: runner.infer(feed), 3, 10)
                row(self.r, "tensorrt", "fp16", f"labeler, host in/out, {label}", self.images, times[label])
        a, b = (statistics.median(t) for t in times.values())
        self.r.data.setdefault("notes", []).append(f"tensorrt overlap: 2-chunk call time / 1-chunk call time = "
                                                   f"{b / a:.3f} (below 1: the overlap pays)")


def e2e_section(report: Report, args) -> None:
    from cdul_rt.bench.e2e import E2EConfig, format_rows, run_e2e

    cpu = not args.device.startswith("cuda")
    cfg = E2EConfig(model=args.model, device=args.device, images=args.e2e_images or (24 if cpu else 2000),
                    batch_size=args.e2e_batch or (8 if cpu else 64), workers=args.e2e_workers or (2 if cpu else 14),
                    naive_images=8 if cpu else 100, image_size=(320, 240) if cpu else (640, 480),
                    work_dir=Path(tempfile.mkdtemp(prefix="cdul-e2e-")), budget_s=max(30.0, report.left() - 15))
    try:
        result = run_e2e(cfg, log=lambda m: print(f"e2e: {m}", flush=True))
    finally:  # 2000 generated JPEGs and the label outputs (hundreds of MB): not left in the temp folder
        shutil.rmtree(cfg.work_dir, ignore_errors=True)
    from dataclasses import asdict

    report.data["e2e"] = {"config": result.config, "machine": result.machine,
                          "rows": [asdict(r) for r in result.rows], "table": format_rows(result.rows, markdown=True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds for everything (the check must end < 5 min)")
    ap.add_argument("--images", type=int, default=8, help="images per call (x10 crops)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu = a dry run of the code paths")
    ap.add_argument("--e2e-images", type=int, default=None,
                    help="JPEGs of the end-to-end folder section (default 2000 on cuda, 24 on cpu; -1 skips it)")
    ap.add_argument("--e2e-batch", type=int, default=None, help="images per call there (default 64; 8 on cpu)")
    ap.add_argument("--e2e-workers", type=int, default=None,
                    help="DataLoader workers / label --workers there (default 14; 2 on cpu)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    report = Report(args.budget)
    report.data["packages"] = packages()
    missing = [k for k in ("torch", "open_clip", "numpy", "PIL", "click") if k in report.data["packages"]
               and report.data["packages"][k].startswith("missing")]
    report.data["missing_required"] = missing
    if missing:
        report.data["sections"]["all"] = f"skipped: required packages missing: {', '.join(missing)}"
    else:
        report.data["machine"] = report.section("machine", machine) or {}
        if not args.no_tests:
            report.data["tests"] = report.section("gpu tests", run_tests, min(150.0, report.left() - 60), need_s=90)
        bench = Bench(report, args.images, args.model, args.device)
        report.section("torch labeler", bench.torch_runtime, need_s=20)
        if report.data["sections"].get("torch labeler") == "ok":
            if args.e2e_images != -1:
                report.section("end-to-end folder", e2e_section, report, args, need_s=90)
            if args.device.startswith("cuda"):
                report.section("torch cuda graphs", bench.torch_graphs, need_s=10)
            report.section("onnxruntime", bench.onnxruntime_cuda, need_s=60)
            report.section("tensorrt", bench.tensorrt, need_s=120)
            if args.device.startswith("cuda"):
                report.section("torch.compile", bench.torch_compile, need_s=60)
    report.data["total_seconds"] = round(time.perf_counter() - report.t0, 1)
    Path(args.out).write_text(json.dumps(report.data, indent=2), encoding="utf-8")
    for r in report.data["bench"]:
        print(f"{r['runtime']:>16} {r['precision']:>5}  {r['variant']:<44} {r['ms_per_image']:>9.3f} ms/img "
              f"{r['images_per_s']:>9.1f} img/s")
    for p in report.data["parity"]:
        print(f"parity {p['path']:<24} S_final max|diff| {p['S_final_max_abs']:.2e}  top-1 {p['top1_agreement']:.3f}")
    if "e2e" in report.data:
        print(report.data["e2e"]["table"])
    for name, status in report.data["sections"].items():
        print(f"{name}: {status}")
    print(f"report: {args.out} ({report.data['total_seconds']}s)")
    return 1 if any(str(s).startswith("failed") for s in report.data["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
