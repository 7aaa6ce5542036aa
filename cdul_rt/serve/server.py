"""``cdul-rt serve``: one open :class:`cdul_rt.Labeler` behind a real Triton Inference Server, through PyTriton.

PyTriton starts NVIDIA's ``tritonserver`` binary (shipped in its wheel) with its Python backend; the backend's
stub forwards each merged batch to the inference functions of :mod:`cdul_rt.serve.handlers`, which run in this
process. Models (names shared with ``export --triton`` where they mean the same thing, see README "Serve"):

- ``labels``     image file bytes -> S_final, S_global, S_ag, embedding, labels, error
- ``image_embedding``  image file bytes -> embedding, error
- ``text_embedding``   UTF-8 strings -> embedding, error (when the runtime has a text encoder)
- ``metadata``   anything -> one JSON string: classes, model, grid, mode, zeta, lambda, precision, manifest hash...
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdul_rt import __version__
from cdul_rt.errors import CdulError
from cdul_rt.fileio import sha256_file

MODELS = ("labels", "image_embedding", "text_embedding", "metadata")
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 64  # images per executed batch (Triton's max_batch_size)
    max_queue_delay_us: int = 2000
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    workers: int = 2  # decode threads
    verbose: bool = False

    def check(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise CdulError(f"--{name.replace('_', '-')} must be in 1-65535, got {port}")
        if len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            raise CdulError(f"--http-port, --grpc-port and --metrics-port must differ, got {self.http_port}, "
                            f"{self.grpc_port}, {self.metrics_port}")
        if self.max_batch < 1:
            raise CdulError(f"--max-batch must be >= 1 (images per executed batch), got {self.max_batch}")
        if self.max_queue_delay_us < 0:
            raise CdulError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if self.max_request_bytes < 1:
            raise CdulError(f"--max-request-bytes must be >= 1, got {self.max_request_bytes}")


def check_ports_free(opts: ServeOptions) -> None:
    """A port already taken is a clear error before anything starts (tritonserver would only log it and exit)."""
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(opts, name)
        family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((opts.host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CdulError(f"port {port} on {opts.host} (--{name.replace('_', '-')}) is already in use "
                                    "(another server?); stop it or choose another port") from None
                raise CdulError(f"cannot listen on {opts.host}:{port} (--{name.replace('_', '-')}): "
                                f"{exc.strerror}; check --host") from None


def libpython_env() -> None:
    """Put this interpreter's own libpython first on ``LD_LIBRARY_PATH`` for the processes PyTriton starts.

    The Python backend stub links ``libpython3.X.so`` by name; with a venv made from a Python that is not the
    system's (pyenv, conda), the loader would pick the system's library of the same minor version and the model
    fails to load (e.g. ``'_thread.RLock' object has no attribute '_recursion_count'``).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *parts])


def _manifest_hash(engine_dir: str | None) -> str | None:
    if not engine_dir:
        return None
    path = Path(engine_dir) / "manifest.json"
    return sha256_file(path) if path.is_file() else None


def server_metadata(labeler: Any, opts: ServeOptions, models: list[str]) -> dict:
    """What the ``metadata`` model answers: the label file's ``config`` for this labeler plus the server's limits."""
    cfg = labeler.options
    return {"tool": "cdul-rt", "version": __version__, "classes": labeler.classes, "config": labeler.config,
            "embed_dim": labeler.embed_dim, "manifest_sha256": _manifest_hash(cfg.engine_dir),
            "engine_dir": cfg.engine_dir, "max_request_bytes": opts.max_request_bytes, "max_pixels": cfg.max_pixels,
            "max_batch": opts.max_batch, "models": models}


def _require_pytriton():
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise CdulError("cdul-rt serve needs PyTriton (it ships the Triton server): pip install 'cdul-rt[serve]' "
                        "(in its own venv: PyTriton needs numpy<2, see README 'Serve')") from None


def _bind(triton, handlers, labeler, opts: ServeOptions, info: dict) -> list[str]:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    c, d = len(labeler.classes), labeler.embed_dim
    batcher = ModelConfig(max_batch_size=opts.max_batch,
                          batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us))
    err = Tensor(name="error", dtype=bytes, shape=(1,))
    emb = Tensor(name="embedding", dtype=np.float32, shape=(d,))
    image = [Tensor(name="image", dtype=bytes, shape=(1,))]
    scores = [Tensor(name=k, dtype=np.float32, shape=(c,)) for k in ("S_final", "S_global", "S_ag")]
    triton.bind(model_name="labels", infer_func=_requests(handlers.labels), inputs=image,
                outputs=[*scores, emb, Tensor(name="labels", dtype=bytes, shape=(1,)), err], config=batcher,
                strict=True)
    triton.bind(model_name="image_embedding", infer_func=_requests(handlers.image_embedding), inputs=image,
                outputs=[emb, err], config=batcher, strict=True)
    bound = ["labels", "image_embedding"]
    if info["text_encoder"]:
        triton.bind(model_name="text_embedding", infer_func=_requests(handlers.text_embedding),
                    inputs=[Tensor(name="text", dtype=bytes, shape=(1,))], outputs=[emb, err], config=batcher,
                    strict=True)
        bound.append("text_embedding")
    bound.append("metadata")
    info["models"] = bound
    triton.bind(model_name="metadata", infer_func=_requests(lambda reqs: handlers.metadata(reqs, info)),
                inputs=[Tensor(name="request", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="json", dtype=bytes, shape=(1,))], config=ModelConfig(max_batch_size=8))
    return bound


def _requests(fn):
    """PyTriton passes ``Request`` objects; the handlers take plain dicts of arrays."""
    def infer(requests):
        return fn([dict(r.data) for r in requests])
    return infer


def _has_text_encoder(labeler: Any) -> bool:
    try:
        labeler.embed_texts(["a photo"])
        return True
    except CdulError:
        return False


def ready_message(opts: ServeOptions, models: list[str]) -> str:
    host = "localhost" if opts.host in ("127.0.0.1", "::1", "localhost") else opts.host
    shown = host if opts.host not in ("0.0.0.0", "::") else "HOST"
    return "\n".join([
        f"cdul-rt serve: ready ({', '.join(models)})",
        f"  HTTP     http://{shown}:{opts.http_port}   gRPC grpc://{shown}:{opts.grpc_port}   "
        f"metrics http://{shown}:{opts.metrics_port}/metrics   (bound to {opts.host})",
        f"  label a folder:  cdul-rt label ./images --server http://{shown}:{opts.http_port}",
        f"  one image:       curl -s http://{shown}:{opts.http_port}/v2/models/labels",
        "  from Python:     see README 'Serve' (tritonclient, 5 lines)",
        "  stop: Ctrl-C or SIGTERM (in-flight requests finish first)",
    ])


def serve(labeler: Any, opts: ServeOptions, echo=print) -> None:
    """Serve ``labeler`` until SIGINT / SIGTERM; returns after in-flight requests finished and Triton stopped."""
    import logging

    _require_pytriton()
    opts.check()
    check_ports_free(opts)
    libpython_env()
    from pytriton.triton import Triton, TritonConfig

    from cdul_rt.serve.handlers import RequestHandlers

    if not opts.verbose:
        logging.getLogger("pytriton").setLevel(logging.WARNING)
    run_dir = run_folder()
    log_file = None if opts.verbose else run_dir / "tritonserver.log"
    config = TritonConfig(log_file=log_file, http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host,
                          grpc_port=opts.grpc_port, metrics_address=opts.host, metrics_port=opts.metrics_port,
                          allow_metrics=True, allow_gpu_metrics=False, exit_timeout_secs=30,
                          log_verbose=1 if opts.verbose else 0)
    handlers = RequestHandlers(labeler, opts.max_request_bytes, opts.workers)
    info = server_metadata(labeler, opts, [])
    info["text_encoder"] = _has_text_encoder(labeler)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    triton = Triton(config=config, workspace=run_dir / "workspace")  # PyTriton's copy of tritonserver (~25 MB)
    keep_log = False
    try:
        models = _bind(triton, handlers, labeler, opts, info)
        try:
            triton.run()  # starts tritonserver, loads the models and waits until Triton reports them ready
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - PyTriton/tritonclient errors: say what failed and where to look
            where = f"Triton's log: {log_file}" if log_file else "Triton's log above"
            raise CdulError(f"Triton could not start or load the models ({str(exc).strip().splitlines()[0][:300]}); "
                            f"see {where}") from None
        echo(ready_message(opts, models) + (f"\n  Triton's log: {log_file}" if log_file else ""))
        triton.serve()  # returns on Ctrl-C / SIGTERM (or if tritonserver dies)
    except KeyboardInterrupt:
        pass
    except CdulError:
        keep_log = log_file is not None  # keep the log of a server that could not start: the error names it
        raise
    finally:
        triton.stop()  # SIGINT to tritonserver: it finishes in-flight requests (up to 30 s), then exits
        signal.signal(signal.SIGTERM, previous)
        handlers.close()
        shutil.rmtree(run_dir / "workspace", ignore_errors=True)
        if not keep_log:
            shutil.rmtree(run_dir, ignore_errors=True)


RUN_PREFIX = "cdul-serve-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def run_folder() -> Path:
    """This server's folder in the temporary directory, named after its pid: Triton's log and PyTriton's workspace
    (its copy of tritonserver, ~25 MB). A server killed with SIGKILL cannot remove its folder, so the folders of
    servers that are no longer running are removed here first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{RUN_PREFIX}*-*"):
        pid = old.name[len(RUN_PREFIX):].split("-")[0]
        if pid.isdigit() and old.is_dir() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # serve() stops Triton the same way for SIGTERM as for Ctrl-C
