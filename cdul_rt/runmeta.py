"""What makes ``cdul-rt label`` safe to re-run: one writer per output, one folder and one configuration per output,
failed files retried, ``--overwrite`` that destroys nothing until the new run has a result, clear I/O errors.

- **Lock**: ``<out>.lock`` is held with ``flock`` for the whole run. A second run on the same output is refused at
  once; the kernel drops the lock when its holder dies (even ``kill -9``), so a stale lock file is taken over.
- **Identity**: ``<out>.meta.json`` records the configuration and the resolved input folder. An existing output is
  resumed only when both match; an output with rows but no meta (deleted, or a file some other tool wrote) is
  refused, because nothing then says which options or which folder its rows came from.
- **Commit point**: nothing on disk changes until the first batch is ready to be written (or the run ends): then
  ``--overwrite`` removes the old output, the meta is written and the failures file is restarted. A run that fails
  before (bad weights, missing engine) leaves the previous result as it was.
- **Failures**: every run retries the files of ``<out>.failures.jsonl`` (they are not in the output). The file is
  rewritten at the commit point and then lists each file that failed in this run once.

The one public module for a run's metadata, shared by every front end (``label`` on a folder, on a URL or
webdataset, ``label --server``, ``label --cluster ray`` and :attr:`cdul_rt.api.Labeler.config`): what a run
records (:func:`recorded_config`, :func:`meta_extra`), writing it (:func:`write_run_meta`), comparing it on resume
(:func:`check_resume`, :func:`check_recorded_config`) and naming what differs (:func:`config_differences`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdul_rt import __version__
from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_write
from cdul_rt.labelfile import sidecar

if TYPE_CHECKING:
    from cdul_rt.pipeline import LabelConfig, LabelSummary
    from cdul_rt.vocab import Vocabulary

def output_error(out: Path, exc: OSError) -> CdulError:
    """An OSError met while writing ``out`` as a message that says what happened and what to do next."""
    where = exc.filename or out
    keep = f"rows already written to {out} are kept; re-run the same command to resume"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CdulError(f"no space left on the device holding {out} ({where}); {keep} once space is freed")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CdulError(f"cannot write {where}: {exc.strerror}; choose an --out in a folder you can write to")
    if exc.errno == errno.EISDIR:
        return CdulError(f"{where} is a directory; --out takes a file name (e.g. {Path(where) / 'labels.jsonl'})")
    if exc.errno == errno.ENOTDIR:
        return CdulError(f"cannot create {where}: a part of the path is a file, not a folder; choose another --out")
    return CdulError(f"writing {out} failed: {exc.strerror or exc} ({where}); {keep}")


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that can never be a label file, before any model loads."""
    if out.is_dir():
        raise CdulError(f"--out {out} is a directory; give a file name such as {out / 'labels.jsonl'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CdulError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
            break


@contextmanager
def locked_output(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for one run; an OSError met while writing it becomes :func:`output_error`'s message."""
    try:
        with OutputLock(out):
            yield
    except OSError as exc:
        raise output_error(out, exc) from exc


class OutputLock:
    """``flock`` on ``<out>.lock`` (holds the owner's pid for the message); released by the kernel on any death."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = sidecar(self.out, "lock")
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise CdulError(f"another cdul-rt label (pid {owner}) is writing {self.out}; wait for it to finish "
                                "or choose another --out") from None
            try:  # a run that just finished unlinks its lock file: make sure ours is still the one at the path
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # still holding the lock: nobody can hold this inode meanwhile
            os.close(self.fd)
            self.fd = None


def _has_rows(out: Path) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in (out, sidecar(out, "journal")))


def check_resume(out: Path, input_folder: Path, config: dict) -> None:
    """Refuse to resume into an output made from another folder, with other options, or by something else."""
    meta = _read_meta(out)
    if not meta:
        if _has_rows(out):
            raise CdulError(f"{out} exists but has no {sidecar(out, 'meta').name}: it was not made by cdul-rt label "
                            "(or its record was deleted), so nothing says which folder and options its rows come "
                            "from; use --overwrite to replace it or choose another --out")
        return
    old = meta.get("config")
    if old is None:
        if _has_rows(out):
            raise CdulError(f"{out} was not made by cdul-rt label (its meta records no labeling configuration); "
                            "use --overwrite to replace it or choose another --out")
        return
    check_config(out, old, config)
    recorded = meta.get("input_resolved") or (meta.get("input") if os.path.isabs(meta.get("input") or "") else None)
    mine = str(Path(input_folder).resolve())
    if recorded is not None and recorded != mine:
        raise CdulError(f"{out} holds labels of {recorded}, not {mine}: resuming would skip every image whose "
                        "relative path matches one already there and mix the two folders; choose another --out, "
                        "or --overwrite to relabel from scratch")


def config_differences(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two recorded configurations, sorted: what a mismatch message names."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_config(out: Path, old: dict | None, config: dict) -> None:
    """The configuration recorded in the meta must be this run's (no meta config: nothing to compare)."""
    if old is None:
        return
    diff = config_differences(old, config)
    if diff:
        raise CdulError(f"{out} was made with a different configuration ({', '.join(diff)} differ); "
                        "use --overwrite to start fresh or choose another --out")


def check_recorded_config(out: Path, config: dict) -> None:
    """Only the recorded configuration, not the folder identity (the Ray path: its --out is a folder of shards)."""
    check_config(out, _read_meta(out).get("config"), config)


def _read_meta(out: Path) -> dict:
    from cdul_rt.labelfile import read_meta

    return read_meta(out)


def write_meta(out: Path, input_folder: Path, config: dict, status: str, last_run: dict | None = None,
               extra: dict | None = None) -> None:
    """Atomically (re)write ``<out>.meta.json``; ``running`` starts a fresh record, later states update it."""
    meta = _read_meta(out) if status != "running" else {}
    meta.update({"tool": "cdul-rt", "version": __version__, "classes": config["classes"], "config": config,
                 "status": status, "input": str(input_folder),
                 "input_resolved": str(Path(input_folder).resolve()), **(extra or {})})
    if status == "running":
        meta["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if last_run is not None:
        meta.update({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "last_run": last_run})
    atomic_write(sidecar(out, "meta"), json.dumps(meta, indent=2))


def update_meta(out: Path, fields: dict) -> None:
    """Add or replace top-level ``fields`` of ``<out>.meta.json``, atomically (the Ray job's cluster facts)."""
    meta = _read_meta(out)
    meta.update(fields)
    atomic_write(sidecar(out, "meta"), json.dumps(meta, indent=2))


def recorded_config(cfg: LabelConfig, vocab: Vocabulary, session: Any, decode_on: str | None = None) -> dict:
    """What the meta records as ``config`` for ``cfg`` run by ``session``: every option that changes a row."""
    agg = cfg.aggregation
    return {
        "classes": list(vocab.classes), "prompts": list(vocab.prompt_names), "template": cfg.template,
        "model": session.model, "weights_hash": session.weights_hash, "runtime": session.runtime,
        "precision": session.precision, "grid": cfg.grid, **agg.params_dict(), "mode": agg.mode,
        "threshold": cfg.threshold, "top_k": cfg.top_k, "save_parts": cfg.save_parts,
        "preprocess": session.preprocess.to_dict(),
        # recorded only when on, so label files made before the option existed still resume
        **({"jpeg_draft": True} if cfg.jpeg_draft else {}),
        **({"decode": "gpu"} if decode_on is not None else {}),  # likewise: a resume never mixes decode paths
        **({"save_embeddings": True} if cfg.save_embeddings else {}),
    }


def meta_extra(cfg: LabelConfig) -> dict:
    """Meta fields beside ``config`` that ``cfg`` adds (what ``cdul-rt similar`` needs to embed a query)."""
    if cfg.save_embeddings:  # what `cdul-rt similar` loads to embed a query in the same space
        return {"embeddings": {"dtype": "float16", "space": "L2-normalised global view",
                               "model": cfg.model, "pretrained": cfg.pretrained, "weights": cfg.weights,
                **({"engine_dir": str(Path(cfg.engine_dir).resolve())} if cfg.engine_dir else {})}}
    return {}


def last_run(summary: LabelSummary) -> dict:
    return {"labeled": summary.labeled, "skipped": summary.skipped, "failed": summary.failed,
            "seconds": round(summary.seconds, 3), "images_per_second": round(summary.images_per_second, 3)}


def write_run_meta(cfg: LabelConfig, config: dict, status: str, summary: LabelSummary | None = None) -> None:
    """:func:`write_meta` for a ``label`` run of ``cfg``: its output, input, extra fields and (when done) counts."""
    write_meta(cfg.out, cfg.input, config, status, last_run(summary) if summary is not None else None,
               meta_extra(cfg))


def clear_outputs(out: Path) -> None:
    from cdul_rt.embeddings import clear_embeddings

    for kind in ("meta", "failures", "journal"):
        sidecar(out, kind).unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    clear_embeddings(out)


class RunFiles:
    """The commit point and the failures log of one ``label`` run (see the module docstring)."""

    def __init__(self, out: Path, input_folder: Path, config: dict, overwrite: bool,
                 meta_extra: dict | None = None) -> None:
        self.out, self.input, self.config, self.overwrite = Path(out), Path(input_folder), config, overwrite
        self.meta_extra = meta_extra or {}
        self.committed = False
        self._pending: list[str] = []
        self._failures = None

    def commit(self) -> None:
        """Called before the first row is written and at the end of the run; only the first call acts."""
        if self.committed:
            return
        if self.overwrite:
            clear_outputs(self.out)
        write_meta(self.out, self.input, self.config, "running", extra=self.meta_extra)
        self._failures = open(sidecar(self.out, "failures"), "w", encoding="utf-8")
        self.committed = True
        for line in self._pending:
            self._failures.write(line)
        self._pending.clear()
        self._failures.flush()

    def add_failure(self, rel: str, reason: str) -> None:
        line = json.dumps({"path": rel, "reason": reason}) + "\n"
        if not self.committed:
            self._pending.append(line)
            return
        self._failures.write(line)
        self._failures.flush()

    def close(self) -> None:
        if self._failures is not None:
            self._failures.close()
            self._failures = None
