"""``--out`` on an object store (``s3://bucket/labels.ray``, any fsspec URL): a local staging copy plus uploads.

The writers of ``label`` keep working on local files (atomic renames, appends, locks); this module moves what they
finish to the store, where one PUT is atomic (an object is there whole or not at all):

- ``--cluster ray`` (a directory of Parquet shards): each shard is uploaded as soon as it is written, and the meta
  after every update. A resume reads the name columns of the shards already in the store (Parquet column
  projection: byte ranges of those columns only) and pulls only the meta. A job killed before an upload loses that
  shard's rows only; the rerun labels them again, so never twice.
- plain ``label`` (one label file): the file, its journal, meta and failures are downloaded before the run (the
  resume state), uploaded every minute and when the run ends.

Credentials are never handled here: fsspec and the store's SDK read them from the environment / config files
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``FSSPEC_S3_*``), and only the URL (with any
``user:secret@`` part removed, :func:`redact`) is ever recorded or printed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from cdul_rt.distributed.sources import _filesystem
from cdul_rt.errors import CdulError
from cdul_rt.labelfile import sidecar

log = logging.getLogger(__name__)
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def redact(url: str) -> str:
    """``s3://KEY:SECRET@bucket/x`` -> ``s3://bucket/x`` (what meta files and messages show)."""
    return _USERINFO.sub(r"\1", str(url))


def _staging_root() -> Path:
    from cdul_rt.cache import cache_dir

    return Path(cache_dir()) / "remote-out"


class RemoteOutput:
    """A label output at ``url`` staged at :attr:`local` (a path of the same name in a private cache folder)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = _filesystem(self.url)
        self.root = self.root.rstrip("/")
        key = hashlib.sha256(redact(self.url).encode()).hexdigest()[:16]
        self.local = _staging_root() / key / PurePosixPath(self.root).name

    def _remote(self, local_file: Path) -> str:
        rel = Path(local_file).relative_to(self.local.parent).as_posix()
        return f"{PurePosixPath(self.root).parent}/{rel}"

    def _fresh(self) -> None:
        shutil.rmtree(self.local.parent, ignore_errors=True)
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.invalidate_cache()

    def _pull_file(self, local_file: Path) -> None:
        remote = self._remote(local_file)
        if self.fs.isfile(remote):
            self.fs.get_file(remote, str(local_file))

    def push(self, local_file: Path) -> None:
        """Upload one finished local file (a shard, a meta) to its place under the URL."""
        self.fs.put_file(str(local_file), self._remote(local_file))

    # -- a shard directory (--cluster ray) -----------------------------------------------------------------------
    def pull_meta(self, overwrite: bool) -> Path:
        """A fresh staging directory holding the store's meta (``--overwrite``: the store's shards are deleted)."""
        from cdul_rt.distributed.shards import FAILURES_DIR

        self._fresh()
        self._refuse_foreign(FAILURES_DIR)
        if overwrite:
            for p in self.shard_objects(""), self.shard_objects(FAILURES_DIR):
                for obj in p:
                    self.fs.rm_file(obj)
            meta = self._remote(sidecar(self.local, "meta"))
            if self.fs.isfile(meta):
                self.fs.rm_file(meta)
        else:
            self._pull_file(sidecar(self.local, "meta"))
        return self.local

    def _refuse_foreign(self, failures_dir: str) -> None:
        """As for a local --out: an object at the URL itself, or objects under it that are not our shards."""
        if self.fs.isfile(self.root):
            raise CdulError(f"--out {redact(self.url)} is an object; with --cluster ray the output is a prefix of "
                            "Parquet shards (e.g. --out s3://bucket/labels.ray)")
        if not self.fs.isdir(self.root):
            return
        foreign = [PurePosixPath(p).name for p in self.fs.ls(self.root, detail=False)
                   if PurePosixPath(p).name != failures_dir
                   and not (PurePosixPath(p).name.startswith("part-") and p.endswith(".parquet"))]
        if foreign:
            raise CdulError(f"--out {redact(self.url)} holds objects that are not cdul-rt shards "
                            f"({', '.join(sorted(foreign)[:3])}...); choose an empty or new prefix")

    def shard_objects(self, sub: str) -> list[str]:
        base = f"{self.root}/{sub}".rstrip("/")
        self.fs.invalidate_cache()
        if not self.fs.isdir(base):
            return []
        return sorted(p for p in self.fs.ls(base, detail=False)
                      if PurePosixPath(p).name.startswith("part-") and p.endswith(".parquet"))

    def done_paths(self) -> tuple[set[str], set[str]]:
        """:func:`cdul_rt.distributed.shards.done_paths` of the store's shards, reading their name columns only."""
        from cdul_rt.distributed.shards import FAILURES_DIR
        from cdul_rt.formats.parquet import read_paths

        def paths(objs: list[str]) -> set[str]:
            done: set[str] = set()
            for obj in objs:
                done.update(read_paths(obj, filesystem=self.fs))
            return done

        return paths(self.shard_objects("")), paths(self.shard_objects(FAILURES_DIR))

    # -- one label file (plain label) ----------------------------------------------------------------------------
    def _file_set(self) -> tuple[Path, ...]:
        return (self.local, sidecar(self.local, "journal"), sidecar(self.local, "failures"),
                sidecar(self.local, "meta"))  # meta last: it names what the rows are

    def pull_file(self) -> Path:
        """A fresh staging copy of the label file, its journal, meta and failures (whatever the store has)."""
        self._fresh()
        for f in self._file_set():
            self._pull_file(f)
        return self.local

    def push_file(self) -> None:
        journal = sidecar(self.local, "journal")
        for f in self._file_set():
            try:
                self.push(f)
            except FileNotFoundError:  # not made (yet), or a journal just folded into its Parquet file
                if f == journal and self.local.is_file() and self.fs.isfile(self._remote(f)):
                    self.fs.rm_file(self._remote(f))  # its rows are in the uploaded file now


UPLOAD_SECONDS = float(os.environ.get("CDUL_RT_UPLOAD_SECONDS", "60"))


def label_to_url(url: str, cfg, run, every: float | None = None):
    """Plain ``label`` into ``url``: ``run(cfg)`` writes the staged copy, which is uploaded every ``every`` seconds
    (default 60, ``$CDUL_RT_UPLOAD_SECONDS``) and when the run ends (also after an error). A run killed mid-way
    keeps what reached the store; a row cut in half by an upload during a write is repaired on resume, as after a
    crash (``labelfile.repair_tail``)."""
    import dataclasses
    import threading

    stage = RemoteOutput(url)
    local = stage.pull_file()
    stop = threading.Event()

    def upload_periodically() -> None:
        while not stop.wait(UPLOAD_SECONDS if every is None else every):
            try:
                stage.push_file()
            except Exception as exc:  # noqa: BLE001 - a failed interim upload is retried at the next one
                log.warning("uploading %s failed (%s); retrying later", redact(url), type(exc).__name__)

    uploader = threading.Thread(target=upload_periodically, name="cdul-upload", daemon=True)
    uploader.start()
    try:
        return run(dataclasses.replace(cfg, out=local))
    finally:
        stop.set()
        uploader.join()
        if local.exists() or sidecar(local, "meta").exists():
            stage.push_file()
