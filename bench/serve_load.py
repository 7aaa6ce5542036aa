"""Load test of `cdul-rt serve` against in-process `cdul-rt label`, side by side in one run (a benchmark, not a test).

1. `cdul-rt label DIR` (in process, same model, runtime and options) on generated JPEGs: images/s of its labeling
   loop (model loading excluded, as the server's is).
   It is measured again after every row below (the server idles meanwhile); each row is compared with the mean of
   the label runs just before and after it.
2. `cdul-rt serve` on free loopback ports; for each client count (default 1, 4, 16, 64) every client thread sends
   the JPEGs' bytes to `labels` over HTTP for --seconds: images/s, p50/p95/p99 latency, and the mean executed batch
   from Triton's metrics endpoint (delta nv_inference_count / delta nv_inference_exec_count).

Runs in the serve venv (PyTriton). Examples:

    PYTHONPATH=. /work/venv-serve/bin/python bench/serve_load.py --model cdul-tiny --threads 1 --images 256
    PYTHONPATH=. /work/venv-serve/bin/python bench/serve_load.py --model ViT-B-32 --threads 1 --images 32 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cdul_rt.serve.probe import free_ports, triton_metric

ROOT = Path(__file__).resolve().parent.parent


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (480, 640)) -> list[Path]:
    """Smooth random scenes (JPEG sizes like photos, not like noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    h, w = size
    for i in range(n):
        small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        p = folder / f"img_{i:04d}.jpg"
        img.save(p, quality=90)
        out.append(p)
    return out


def child_env(threads: int | None) -> dict:
    """Both sides get the same torch intra-op threads (OMP_NUM_THREADS): on a shared, oversubscribed machine two
    OpenMP threads can be many times slower than one, which would decide the comparison by itself."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_label(folder: Path, model_args: list[str], out: Path, env: dict) -> float:
    r = subprocess.run([sys.executable, "-m", "cdul_rt", "label", str(folder), *model_args, "--out", str(out), "-q"],
                       capture_output=True, text=True, check=True, env=env)
    return float(re.search(r"\(([0-9.]+) img/s\)", r.stdout).group(1))


def start_server(model_args: list[str], extra: list[str], env: dict):
    http_port, grpc_port, metrics_port = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "cdul_rt", "serve", *model_args, "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if "cdul-rt serve: ready" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, http_port, metrics_port
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def load(http_port: int, metrics_port: int, payloads: list[bytes], clients: int, seconds: float) -> dict:
    import tritonclient.http as http

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=300)
        i = k
        mine = []
        while time.perf_counter() < stop_at:
            inp = http.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[payloads[i % len(payloads)]]], dtype=object))
            t0 = time.perf_counter()
            res = conn.infer("labels", [inp], outputs=[http.InferRequestedOutput("S_final"),
                                                       http.InferRequestedOutput("error")])
            mine.append(time.perf_counter() - t0)
            if res.as_numpy("error")[0, 0]:
                errors[0] += 1
            i += clients
        with lock:
            latencies.extend(mine)

    counters = ("nv_inference_count", "nv_inference_exec_count")
    before = [triton_metric(metrics_port, c) for c in counters]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    count, execs = (triton_metric(metrics_port, c) - b for c, b in zip(counters, before))
    lat = np.array(latencies) * 1000
    return {"clients": clients, "images": len(latencies), "seconds": round(wall, 2),
            "images_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "mean_batch": round(count / execs, 2) if execs else None, "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cdul-tiny")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--classes", default="coco")
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-queue-delay-us", default="2000")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for label and serve alike")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    model_args = ["--model", args.model, "--pretrained", args.pretrained, "--classes", args.classes,
                  "--runtime", args.runtime, "--precision", args.precision]
    try:
        paths = make_jpegs(tmp / "images", args.images)
        payloads = [p.read_bytes() for p in paths]
        env = child_env(args.threads)
        # The in-process reference is measured again between the rows (the server idles meanwhile), and each row is
        # compared with the mean of the label runs just before and just after it: on a shared machine whose load
        # changes by the minute, one label run at the start would compare the server with another machine.
        def reference() -> float:
            out = tmp / "local.jsonl"
            out.unlink(missing_ok=True)
            rate = run_label(tmp / "images", model_args, out, env)
            print(f"in-process label: {rate:.2f} img/s ({args.images} JPEGs 640x480, {args.model}, {args.runtime} "
                  f"{args.precision})", flush=True)
            return rate

        refs = [reference()]
        proc, http_port, metrics_port = start_server(model_args, ["--max-queue-delay-us", args.max_queue_delay_us], env)
        rows = []
        try:
            load(http_port, metrics_port, payloads[:4], 2, 2.0)  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                row = load(http_port, metrics_port, payloads, clients, args.seconds)
                refs.append(reference())
                row["label_images_per_s"] = round((refs[-2] + refs[-1]) / 2, 3)
                row["vs_label"] = round(row["images_per_s"] / row["label_images_per_s"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
        local = float(np.mean(refs))
        print("\n| clients | images/s | vs in-process label | p50 ms | p95 ms | p99 ms | mean executed batch |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['clients']} | {r['images_per_s']} | {r['vs_label']:.2f} | {r['p50_ms']} | {r['p95_ms']} | "
                  f"{r['p99_ms']} | {r['mean_batch']} |")
        print(f"| in-process `label` (before/after each row) | {' / '.join(f'{r:.2f}' for r in refs)} | 1.00 | | | | "
              "(batch 8) |")
        print(f"server exit code after SIGTERM: {rc}")
        if args.json:
            args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "args": vars(args)
                                             | {"json": str(args.json)}, "label_images_per_s": refs, "rows": rows},
                                            indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
