"""The two file primitives every writer and checker shares: a streaming sha256 and the temporary-file-and-rename
write that never leaves a half file at the final path.

Torch-free and numpy-free (stdlib only), so any layer can import it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Plain (not memoised) streaming sha256 of a file: a check must see a file that changed in place.
    (:func:`cdul_rt.cache.file_sha256` memoises this for large checkpoints.)"""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file (0666 less the umask): mkstemp's 0600 would make a label
    file or a checkpoint unreadable to the user's group, which a plain write never did."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read the umask the only other way there is (set, then restore)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, sync: bool = True, suffix: str = ".partial") -> Iterator[Path]:
    """A uniquely named temporary path beside ``path`` (mkstemp, so concurrent writers never share one) for writers
    that want a path (``torch.save``, ``np.save``, pyarrow, onnx) or that stream; renamed over ``path`` when the
    block ends, removed if it raises. Readers never see a partial file at ``path``.

    Args:
        sync: fsync the temporary before the rename (crash-proof; thousands of report thumbnails skip it).
        suffix: the temporary's ending (``.partial.npy`` for ``np.save``, which appends ``.npy`` otherwise; a caller
            that recognises its own leftovers by their ending keeps it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    os.close(fd)
    try:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, _file_mode())  # after the writer: a umask such as 0277 must not lock it out of its own file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str, sync: bool = True, encoding: str = "utf-8",
                 errors: str = "strict") -> None:
    """Write ``data`` (``str`` is encoded with ``encoding``/``errors``) all at once via :func:`atomic_path`."""
    if isinstance(data, str):
        data = data.encode(encoding, errors)
    with atomic_path(path, sync=sync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
