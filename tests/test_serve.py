"""`cdul-rt serve` on a real Triton Inference Server (PyTriton's tritonserver) with the tiny CLIP, on free loopback
ports: a bad request merged with good ones fails alone, `label --server` (HTTP and gRPC) equals a local `label`,
resume and refusal, SIGTERM finishes in-flight requests and exits 0, SIGKILL leaves no process behind, a port in use
is a clear error, and the README's client runs.

PyTriton pins numpy<2, so these run in the serve venv (README "Serve": `pip install -e '.[serve,onnx,test]'`);
.ci/run makes it. In a venv without PyTriton they are skipped.
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytriton", reason="the serve tests run in the serve venv (README 'Serve'; .ci/run makes it)")
import tritonclient.http as http  # noqa: E402

from cdul_rt.labelfile import iter_rows, read_label_file, read_meta  # noqa: E402
from cdul_rt.serve.probe import free_ports, triton_metric  # noqa: E402

from conftest import make_broken, make_images  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.serve]
MODEL_ARGS = ["--pretrained", "none", "--classes", "voc", "--grid", "2"]
READY_TIMEOUT_S = 240


class Server:
    """`cdul-rt serve` as a user starts it, in its own process."""

    def __init__(self, model: Path | None, *extra: str) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        model_args = ["--model", str(model), *MODEL_ARGS] if model is not None else []
        cmd = [sys.executable, "-m", "cdul_rt", "serve", *model_args,
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(READY_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("server did not become ready:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "cdul-rt serve: ready" in line:
                self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def metric(self, name: str, model: str = "labels") -> float:
        return triton_metric(self.metrics, name, model)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "images"
    make_images(root, 10, seed=3)
    make_broken(root)
    return root


@pytest.fixture(scope="module")
def server(tiny_config):
    # a long queue delay: concurrent requests are sure to be merged into one execution
    srv = Server(tiny_config, "--max-queue-delay-us", "200000", "--max-pixels", "40000")
    yield srv
    assert srv.stop() == 0


def _infer(url: str, data: bytes) -> dict:
    client = http.InferenceServerClient(url.split("://")[1])
    inp = http.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    res = client.infer("labels", [inp])
    return {k: res.as_numpy(k) for k in ("S_final", "error", "labels")}


def test_bad_requests_merged_with_good_ones_fail_alone(server, folder, tiny_config):
    from cdul_rt import Labeler

    good = sorted(folder.rglob("img_*"))[:6]
    bad = [(folder / n).read_bytes() for n in make_broken(folder)]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(buf, "PNG")  # over --max-pixels 40000
    payloads = [p.read_bytes() for p in good] + bad + [buf.getvalue()]
    before = (server.metric("nv_inference_count"), server.metric("nv_inference_exec_count"))
    results: list = [None] * len(payloads)
    barrier = threading.Barrier(len(payloads))

    def client(i: int) -> None:
        barrier.wait()
        results[i] = _infer(server.url, payloads[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    inferences = server.metric("nv_inference_count") - before[0]
    executions = server.metric("nv_inference_exec_count") - before[1]
    assert inferences == len(payloads) and executions < inferences  # requests were merged

    errors = [r["error"][0, 0].decode() for r in results]
    assert errors[:6] == [""] * 6
    assert errors[6] == "not an image (or an unsupported format)"
    assert errors[7].startswith("empty") and "truncated" in errors[8] and "decompression bomb" in errors[9]
    with Labeler.open(str(tiny_config), **{"pretrained": "none", "classes": "voc", "grid": 2}) as lab:
        local = lab.label(good)
    got = np.stack([r["S_final"][0] for r in results[:6]])
    assert np.abs(got - local.scores).max() < 1e-5
    assert [json.loads(r["labels"][0, 0]) for r in results[:6]] == local.labels
    assert _infer(server.url, payloads[0])["error"][0, 0] == b""  # and it keeps serving


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_label_server_writes_what_local_label_writes(server, folder, tiny_config, tmp_path, scheme):
    from click.testing import CliRunner

    from cdul_rt.cli import main

    port = server.http if scheme == "http" else server.grpc
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    r = CliRunner().invoke(main, ["label", str(folder), "--model", str(tiny_config), *MODEL_ARGS, "--max-pixels",
                                  "40000", "--out", str(local), "-q", "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["label", str(folder), "--server", f"{scheme}://127.0.0.1:{port}", "--in-flight", "4",
                                  "--out", str(remote), "-q"])
    assert r.exit_code == 0, r.output
    a, b = read_label_file(local), read_label_file(remote)
    order = [b.paths.index(p) for p in a.paths]
    assert sorted(a.paths) == sorted(b.paths) and len(a.paths) == 10
    assert np.abs(a.scores - b.scores[order]).max() < 1e-5
    labels = lambda p: {r["path"]: r["labels"] for r in iter_rows(p)}  # noqa: E731
    assert labels(local) == labels(remote)
    fails = lambda p: {json.loads(x)["path"] for x in Path(f"{p}.failures.jsonl").read_text().splitlines()}  # noqa: E731
    assert fails(local) == fails(remote) == {"broken_text.jpg", "broken_empty.png", "broken_truncated.jpg"}
    meta_local, meta_remote = read_meta(local)["config"], read_meta(remote)["config"]
    assert meta_remote == meta_local  # same model, vocabulary, options: the same recorded config

    r = CliRunner().invoke(main, ["label", str(folder), "--server", f"{scheme}://127.0.0.1:{port}", "--out",
                                  str(remote), "-q"])
    assert r.exit_code == 0 and "already done" in r.output  # resume: nothing new

    other = tmp_path / "other.jsonl"  # made with another vocabulary: the server's would be mixed in
    r = CliRunner().invoke(main, ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none",
                                  "--classes", "a,b", "--grid", "2", "--out", str(other), "-q", "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["label", str(folder), "--server", f"{scheme}://127.0.0.1:{port}", "--out",
                                  str(other), "-q"])
    assert r.exit_code == 2 and "different configuration" in r.output and "classes" in r.output


def test_label_server_refuses_options_the_server_decides_and_a_dead_url(folder, tmp_path):
    from click.testing import CliRunner

    from cdul_rt.cli import main

    r = CliRunner().invoke(main, ["label", str(folder), "--server", "http://127.0.0.1:9", "--classes", "voc"])
    assert r.exit_code == 2 and "--classes" in r.output and "cdul-rt serve" in r.output
    (port,) = free_ports(1)
    r = CliRunner().invoke(main, ["label", str(folder), "--server", f"http://127.0.0.1:{port}", "--out",
                                  str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "no cdul-rt server answers" in r.output


def test_metadata_and_embeddings(server, folder):
    from cdul_rt.serve.client import ServerClient

    info = ServerClient(server.url).metadata()
    assert info["classes"][:2] == ["aeroplane", "bicycle"] and info["config"]["grid"] == 2
    assert info["config"]["zeta"] == 0.3 and info["config"]["mode"] == "cdul" and info["config"]["precision"] == "fp32"
    assert set(info["models"]) == {"labels", "image_embedding", "text_embedding", "metadata"}
    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")
    inp = http.InferInput("text", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"a dog"], [b"a cat"]], dtype=object))
    emb = client.infer("text_embedding", [inp]).as_numpy("embedding")
    assert emb.shape == (2, info["embed_dim"]) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    inp = http.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[sorted(folder.rglob("img_*"))[0].read_bytes()]], dtype=object))
    res = client.infer("image_embedding", [inp])
    assert res.as_numpy("error")[0, 0] == b"" and np.isclose(np.linalg.norm(res.as_numpy("embedding")[0]), 1,
                                                                atol=1e-4)


def test_serve_an_exported_folder_by_its_manifest(tiny_config, folder, tmp_path):
    """--engine-dir alone (self-describing): onnxruntime, the folder's grid/zeta/lambda, text.onnx for texts."""
    import hashlib

    from click.testing import CliRunner

    from cdul_rt.cli import main
    from cdul_rt.export.clip import ExportOptions, export_clip
    from cdul_rt.serve.client import ServerClient

    art = tmp_path / "art"
    export_clip(ExportOptions(out=art, model=str(tiny_config), pretrained="none", classes="voc", grid=2, zeta=0.2,
                              lam=0.5), log=lambda m: None)
    srv = Server(None, "--engine-dir", str(art), "--classes", "voc")
    try:
        info = ServerClient(srv.url).metadata()
        assert info["manifest_sha256"] == hashlib.sha256((art / "manifest.json").read_bytes()).hexdigest()
        assert (info["config"]["runtime"], info["config"]["grid"], info["config"]["zeta"],
                info["config"]["lambda"]) == ("onnxruntime", 2, 0.2, 0.5)
        assert "text_embedding" in info["models"]
        local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
        r = CliRunner().invoke(main, ["label", str(folder), "--runtime", "onnxruntime", "--engine-dir", str(art),
                                      "--classes", "voc", "--out", str(local), "-q",
                                      "--workers", "0"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["label", str(folder), "--server", srv.url, "--out", str(remote), "-q"])
        assert r.exit_code == 0, r.output
        a, b = read_label_file(local), read_label_file(remote)
        order = [b.paths.index(p) for p in a.paths]
        assert np.abs(a.scores - b.scores[order]).max() < 1e-5
    finally:
        assert srv.stop() == 0


def test_readme_client_runs(server, folder, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Serve", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    image = sorted(folder.rglob("img_*.jpg"))[0]
    (tmp_path / "cat.jpg").write_bytes(image.read_bytes())
    code = code.replace("localhost:8000", f"localhost:{server.http}")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stdout.lower() and re.search(r"\d\.\d", r.stdout), r.stdout


def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny_config, folder):
    srv = Server(tiny_config, "--max-queue-delay-us", "1500000", "--max-batch", "64")  # a request waits 1.5 s
    data = sorted(folder.rglob("img_*"))[0].read_bytes()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(_infer(srv.url, data)))
    t.start()
    time.sleep(0.5)  # the request is in Triton's queue now
    rc = srv.stop(signal.SIGTERM)
    t.join(30)
    assert rc == 0, "".join(srv.lines[-30:])
    assert result and result["error"][0, 0] == b"" and np.isfinite(result["S_final"]).all()


def test_sigkill_leaves_no_tritonserver_or_stub_behind(tiny_config):
    srv = Server(tiny_config)
    kids = descendants(srv.proc.pid)
    names = {(Path("/proc") / str(p) / "comm").read_text().strip() for p in kids if alive(p)}
    assert any("tritonserver" in n for n in names), names
    srv.proc.kill()
    srv.proc.wait(10)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and any(alive(p) for p in kids):
        time.sleep(0.5)
    left = {p: (Path("/proc") / str(p) / "cmdline").read_bytes()[:80] for p in kids if alive(p)}
    assert not left, f"left behind after SIGKILL: {left}"


def test_a_sigkilled_servers_folder_is_removed_by_the_next_server(tiny_config):
    import tempfile

    def folders(pid):
        return list(Path(tempfile.gettempdir()).glob(f"cdul-serve-{pid}-*"))

    srv = Server(tiny_config)
    pid = srv.proc.pid
    try:
        (mine,) = folders(pid)
        assert (mine / "workspace").is_dir() and (mine / "tritonserver.log").is_file()
    finally:
        srv.proc.kill()
        srv.proc.wait(10)
    assert folders(pid) == [mine]  # SIGKILL: nothing could clean up
    nxt = Server(tiny_config)
    try:
        assert folders(pid) == []  # the next server removed the dead one's folder (workspace and all)
        assert len(folders(nxt.proc.pid)) == 1
    finally:
        nxt.proc.send_signal(signal.SIGTERM)
        nxt.proc.wait(60)
    assert folders(nxt.proc.pid) == []  # a clean stop removes its own


def test_a_port_in_use_is_a_clear_error(tiny_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        other = free_ports(2)
        r = subprocess.run([sys.executable, "-m", "cdul_rt", "serve", "--model", str(tiny_config), *MODEL_ARGS,
                            "--http-port", str(port), "--grpc-port", str(other[0]), "--metrics-port", str(other[1])],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 (--http-port) is already in use" in r.stderr
    assert "Traceback" not in r.stderr
