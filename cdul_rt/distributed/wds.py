"""webdataset tar shards as input (the format img2dataset writes and clip-retrieval reads).

``label 'shards/{00000..00099}.tar'`` (brace patterns, local paths or fsspec URLs): each shard is streamed from its
store through ``webdataset``'s tar iterator (never extracted to disk), its members are grouped into samples by
``__key__``, and a sample's image member is decoded in memory by the decoder loose files use, so the scores equal a
run on the same images as files. A sample's row has ``path = <shard name>/<__key__>`` (e.g. ``00003.tar/000030017``),
so ``eval``, ``report`` and resume work unchanged. A sample with no image member, an image that does not decode and
the unreadable rest of a damaged shard are failures with a reason, like unreadable files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from cdul_rt.preprocess import PreprocessConfig

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)  # sample member extensions, in preference order


def _expand(pattern: str) -> list[str]:
    if "{" not in pattern:
        return [pattern]
    try:
        from braceexpand import braceexpand  # a dependency of webdataset
    except ImportError as exc:
        raise CdulError(f"{pattern}: brace patterns of webdataset shards need the webdataset extra: "
                        "pip install 'cdul-rt[webdataset]'") from exc
    return list(braceexpand(pattern))


def is_shard_source(source: str) -> bool:
    """True for a tar shard or a brace pattern of them (``shards/{00000..00099}.tar``)."""
    s = str(source).rstrip("/")
    return bool(s) and all(name.lower().endswith(SHARD_SUFFIXES) for name in _expand(s))


def shard_name(uri: str) -> str:
    """The shard's part of a row's path: its file name (``00003.tar``)."""
    return PurePosixPath(str(uri).split("://", 1)[-1]).name


def list_shards(pattern: str) -> list[tuple[str, str]]:
    """``(shard name, uri)`` of every shard the pattern names; all must exist, and names must be unique (they are
    the first part of every row's path)."""
    from cdul_rt.distributed.sources import _filesystem, is_url

    shards = _expand(str(pattern))
    seen: dict[str, str] = {}
    missing = []
    for uri in shards:
        if is_url(uri):
            fs, p = _filesystem(uri)
            exists = fs.isfile(p)
        else:
            from pathlib import Path

            exists = Path(uri).is_file()
        if not exists:
            missing.append(uri)
        name = shard_name(uri)
        if name in seen and seen[name] != uri:
            raise CdulError(f"shards {seen[name]} and {uri} have the same name {name!r}; rows are named "
                            "<shard name>/<key>, so shard names must be unique")
        seen[name] = uri
    if missing:
        raise CdulError(f"{len(missing)} of {len(shards)} shard(s) do not exist, e.g. {missing[0]}; check the "
                        "pattern (brace ranges like {00000..00099} are expanded)")
    return [(shard_name(u), u) for u in shards]


@dataclass
class Sample:
    """One webdataset sample: ``path`` (``<shard>/<key>``) and its image member's bytes, or why it has none."""

    path: str
    data: bytes | None
    error: str | None = None


def _open(uri: str):
    from cdul_rt.distributed.sources import _filesystem, is_url

    if is_url(uri):
        fs, p = _filesystem(uri)
        return fs.open(p, "rb")
    return open(uri, "rb")


def iter_samples(uri: str, skip: set[str] | frozenset = frozenset()) -> Iterator[Sample]:
    """Stream the samples of one shard (keys in ``skip`` are passed over without decoding). Never raises for bad
    data: a damaged shard ends with a failure sample ``<shard>/<after the last good key>``."""
    from cdul_rt.errors import require

    require("webdataset", "webdataset")
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    name = shard_name(uri)
    last = ""
    try:
        with _open(uri) as f:
            members = ({**m, "__url__": uri} for m in tar_file_iterator(f))
            for sample in group_by_keys(members):
                key = sample["__key__"]
                last = key
                if key in skip:
                    continue
                ext = next((e for e in _IMAGE_EXTS if e in sample), None)
                if ext is None:
                    others = sorted(k for k in sample if not k.startswith("__"))
                    yield Sample(f"{name}/{key}", None, f"no image in the sample (members: {', '.join(others)})")
                else:
                    yield Sample(f"{name}/{key}", sample[ext])
    except Exception as exc:  # noqa: BLE001 - a truncated or unreadable shard is data, not a crash
        reason = re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}")[:300]
        where = f"{name}/{last}+" if last else f"{name}/"
        yield Sample(where, None, f"unreadable shard after {last or 'its start'}: {reason}")


def decode_shard(uri: str, skip: set[str] | frozenset, grid: int, preprocess: PreprocessConfig,
                 max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_draft: bool = False):
    """``(path, crops | None, error | None)`` for every sample of a shard, in shard order."""
    from cdul_rt.distributed.sources import crops_from_bytes

    for s in iter_samples(uri, skip):
        if s.data is None:
            yield s.path, None, s.error
            continue
        d = crops_from_bytes(s.path, s.data, grid, preprocess, max_pixels, jpeg_draft)
        yield s.path, d.crops, d.error


def done_keys(done) -> dict[str, set[str]]:
    """Already-written ``<shard>/<key>`` paths grouped as ``{shard name: {keys}}`` (resume per shard and key)."""
    by_shard: dict[str, set[str]] = {}
    for p in done:
        name, _, key = p.partition("/")
        by_shard.setdefault(name, set()).add(key)
    return by_shard


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write a webdataset shard: ``samples`` are ``(key, {ext: bytes})`` (tests and benchmarks)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


__all__ = ["SHARD_SUFFIXES", "Sample", "decode_shard", "done_keys", "is_shard_source", "iter_samples",
           "list_shards", "shard_name", "write_shard"]
