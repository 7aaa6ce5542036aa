"""``cdul-rt label DIR --server URL``: the client side of ``cdul-rt serve``.

Reads the files of ``DIR``, keeps ``--in-flight`` requests (one image file each) in flight over HTTP or gRPC, and
writes the same label file, failures file and meta as a local ``label`` run, resumable the same way. The meta's
``config`` is the server's (its model, vocabulary, grid, zeta, ...), so resuming against a server with another
model or vocabulary is refused exactly as a local resume with other options is.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from cdul_rt.aggregation import OPTIONS as AGGREGATION_OPTIONS
from cdul_rt.errors import CdulError
from cdul_rt.serve.handlers import request_too_large

SCORES = ("S_final", "S_global", "S_ag")
# label options the server decides (given with --server they are refused: set them on `cdul-rt serve`)
SERVER_SIDE = ("model", "weights", "pretrained", "classes", "template", "grid", *AGGREGATION_OPTIONS, "threshold",
               "top_k", "runtime", "precision", "device", "engine_dir", "max_pixels", "compile", "jpeg_draft",
               "decode", "ort_tensorrt", "trt_workspace", "trt_typing", "trt_chunk_images")


class ImageRefused(Exception):
    """The server could not read this image (its reason is the failures file's)."""


@dataclass(frozen=True)
class ServerURL:
    protocol: str  # http or grpc
    address: str  # host:port

    @classmethod
    def parse(cls, url: str) -> "ServerURL":
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "grpc") or not parsed.hostname:
            raise CdulError(f"--server must be http://HOST:PORT or grpc://HOST:PORT, got {url!r}")
        port = parsed.port or (8000 if parsed.scheme == "http" else 8001)
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        return cls(parsed.scheme, f"{host}:{port}")

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}"


class ServerClient:
    """Thread-safe: each thread gets its own tritonclient connection."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = ServerURL.parse(url)
        self.timeout_s = timeout_s
        try:
            if self.url.protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
        except ImportError as exc:
            raise CdulError(f"label --server {self.url.protocol}:// needs tritonclient[{self.url.protocol}]: "
                            "pip install 'cdul-rt[serve]'") from exc
        self._module = module
        self._local = threading.local()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.url.protocol == "http":
                client = self._module.InferenceServerClient(self.url.address, connection_timeout=self.timeout_s,
                                                            network_timeout=self.timeout_s)
            else:
                client = self._module.InferenceServerClient(self.url.address)
            self._local.client = client
        return client

    def _infer(self, model: str, name: str, value: bytes, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        inp = self._module.InferInput(name, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[value]], dtype=object))
        wanted = [self._module.InferRequestedOutput(o) for o in outputs]
        kwargs = {"timeout": int(self.timeout_s * 1e6)} if self.url.protocol == "grpc" else {}
        res = self._client().infer(model, [inp], outputs=wanted, **kwargs)
        return {o: res.as_numpy(o) for o in outputs}

    def metadata(self) -> dict:
        """The server's model metadata (what it labels with); a clear error when no cdul-rt server answers."""
        try:
            out = self._infer("metadata", "request", b"", ("json",))
        except Exception as exc:  # noqa: BLE001 - connection refused, unknown model, timeouts: all mean the same
            raise CdulError(f"no cdul-rt server answers at {self.url} ({_short(exc)}); start one with "
                            "`cdul-rt serve` or check --server") from None
        return json.loads(_text(out["json"].reshape(-1)[0]))

    def label(self, data: bytes) -> dict[str, np.ndarray]:
        """S_final, S_global, S_ag ``[C]`` of one image file; raises :class:`ImageRefused` with the server's reason
        for an image it could not read."""
        out = self._infer("labels", "image", data, (*SCORES, "error"))
        err = _text(out["error"].reshape(-1)[0])
        if err:
            raise ImageRefused(err)
        return {k: out[k][0] for k in SCORES}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _label_one(client: ServerClient, path: Path, limit: int):
    """(scores, None) or (None, reason) for one file; server faults (not the image's) raise."""
    try:
        size = path.stat().st_size
        if size > limit:
            return None, request_too_large(size, limit)
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc.strerror or exc}"
    try:
        return client.label(data), None
    except ImageRefused as exc:
        return None, str(exc)


def label_with_server(cfg: Any, server: str, in_flight: int = 16):
    """``label_folder`` with the scores coming from ``cdul-rt serve`` at ``server``: the same lock, resume,
    commit point, failures file and meta (:mod:`cdul_rt.runmeta`)."""
    from cdul_rt.labelfile import output_format
    from cdul_rt.runmeta import check_out_path, locked_output

    if in_flight < 1:
        raise CdulError(f"--in-flight must be >= 1 (requests kept in flight), got {in_flight}")
    if not cfg.input.exists():
        raise CdulError(f"input {cfg.input} does not exist")
    output_format(cfg.out)
    check_out_path(cfg.out)
    client = ServerClient(server)
    info = client.metadata()
    with locked_output(cfg.out):
        return _label_locked(cfg, client, info, in_flight)


def _label_locked(cfg: Any, client: ServerClient, info: dict, in_flight: int):
    from cdul_rt.imageio import iter_images, relative_name
    from cdul_rt.labelfile import LabelWriter
    from cdul_rt.pipeline import LabelSummary, progress_bar
    from cdul_rt.runmeta import RunFiles, check_resume, write_run_meta

    config = {**info["config"], "save_parts": cfg.save_parts}  # the server's options; the parts are the client's
    if not cfg.overwrite:
        check_resume(cfg.out, cfg.input, config)
    writer = LabelWriter(cfg.out, list(config["classes"]), config["threshold"], config["top_k"], cfg.save_parts)
    files = RunFiles(cfg.out, cfg.input, config, cfg.overwrite)
    writer.before_open = files.commit  # --overwrite removes the old output only at the first batch
    skip = set() if cfg.overwrite else writer.existing()  # failed files are not in it: they are retried
    summary = LabelSummary(cfg.out, skipped=len(skip))
    todo = [p for p in iter_images(cfg.input) if relative_name(p, cfg.input) not in skip]
    start = time.perf_counter()
    writer.open()
    try:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="cdul-client") as pool, \
                progress_bar(cfg, len(todo)) as bar:
            _stream(cfg, client, pool, todo, in_flight, int(info["max_request_bytes"]), writer, files, summary, bar)
        files.commit()
    finally:
        summary.seconds = time.perf_counter() - start
        if files.committed:  # never leave an output behind a run that changed nothing
            writer.close(finalize=True)
        files.close()
    write_run_meta(cfg, config, "complete", summary)
    return summary


def _stream(cfg, client, pool, todo, in_flight, limit, writer, files, summary, bar) -> None:
    """Keep ``in_flight`` requests going; write results in file order, in batches of ``cfg.batch_size``."""
    from cdul_rt.imageio import relative_name

    window: deque = deque()
    rels: list[str] = []
    rows: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}

    def flush() -> None:
        if rels:
            files.commit()  # --overwrite clears the old output here, before this batch's first byte
            refused = writer.write_batch(rels, *(np.stack(rows[k]) for k in SCORES))
            for rel, reason in refused:
                fail(rel, reason)
            summary.labeled += len(rels) - len(refused)
            bar.update(len(rels))
            rels.clear()
            for v in rows.values():
                v.clear()

    def fail(rel: str, reason: str) -> None:
        files.add_failure(rel, reason)
        summary.add_failure(rel, reason)
        bar.update(1)

    def collect() -> None:
        rel, future = window.popleft()
        scores, reason = future.result()  # a server fault raises here and ends the run (resumable)
        if scores is None:
            fail(rel, reason)
            return
        rels.append(rel)
        for k in SCORES:
            rows[k].append(scores[k])
        if len(rels) >= (cfg.batch_size or 8):
            flush()

    try:
        for path in todo:
            window.append((relative_name(path, cfg.input), pool.submit(_label_one, client, path, limit)))
            if len(window) >= in_flight:
                collect()
        while window:
            collect()
    except Exception as exc:
        for _, future in window:
            future.cancel()
        if isinstance(exc, CdulError):
            raise
        raise CdulError(f"the server at {client.url} failed ({_short(exc)}); the labels so far are kept: run the "
                        "same command again to resume") from None
    finally:
        flush()
