"""Where cdul-rt keeps caches (text embeddings, file hashes, exported artifacts). ``CDUL_RT_CACHE`` overrides."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cdul_rt.fileio import sha256_file


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("CDUL_RT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdul-rt")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so large checkpoints are hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir("hashes") / f"{key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = sha256_file(path, chunk)
    memo.write_text(digest)
    return digest


def json_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]
