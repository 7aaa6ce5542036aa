"""Plain ``cdul-rt label`` (one machine) for inputs that are not a local folder: fsspec URLs (``s3://bucket/x``)
and webdataset tar shards (``shards/{00000..00099}.tar``, local or remote).

The images are streamed (listing one prefix at a time, tar members straight from the stream) and decoded in this
process by the decoder loose files use; scoring goes through :class:`cdul_rt.api.labeler.Labeler` and the label
file, its meta, lock, failures file and resume rules are plain ``label``'s (:mod:`cdul_rt.runmeta`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.labelfile import read_meta
from cdul_rt.pipeline import LabelConfig, LabelSummary, progress_bar
from cdul_rt.runmeta import meta_extra, recorded_config, write_run_meta


def is_streamed_source(source: str) -> bool:
    """Inputs plain ``label`` reads through this module rather than the folder pipeline."""
    from cdul_rt.distributed.sources import is_url
    from cdul_rt.distributed.wds import is_shard_source

    return is_url(source) or is_shard_source(source)


def decoded_items(source: str, skip: set[str], grid: int, preprocess, max_pixels: int,
                  jpeg_draft: bool = False) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """``(path, crops | None, reason | None)`` for every image of ``source`` whose path is not in ``skip``."""
    from cdul_rt.distributed.sources import decode_uri, iter_listing
    from cdul_rt.distributed.wds import decode_shard, done_keys, is_shard_source, list_shards

    if is_shard_source(source):
        keys = done_keys(skip)
        for name, uri in list_shards(source):
            yield from decode_shard(uri, keys.get(name, set()), grid, preprocess, max_pixels, jpeg_draft)
        return
    for path, uri in iter_listing(source):
        if path not in skip:
            d = decode_uri(uri, grid, preprocess, max_pixels, jpeg_draft)
            yield path, d.crops, d.error


def source_name(source: str) -> str:
    """What the meta records as ``source`` and a resume compares: the URL without credentials, or the absolute
    local path / shard pattern (so the same command from another folder resumes)."""
    from cdul_rt.distributed.remote_out import redact
    from cdul_rt.distributed.sources import is_url

    return redact(source) if is_url(source) else os.path.abspath(source)


def label_source(cfg: LabelConfig, source: str) -> LabelSummary:
    """Label ``source`` into the label file ``cfg.out`` (resumable; failed images are retried like files)."""
    from cdul_rt.labelfile import output_format
    from cdul_rt.runmeta import check_out_path, locked_output

    if cfg.save_embeddings:
        raise CdulError("--save-embeddings is not available for URL or webdataset inputs yet; label a local folder")
    if cfg.decode == "gpu":
        raise CdulError("--decode gpu is not available for URL or webdataset inputs (they decode on the CPU); "
                        "drop --decode or use --decode cpu")
    output_format(cfg.out)
    cfg.check_options()
    check_out_path(cfg.out)
    with locked_output(cfg.out):
        return _label_locked(cfg, source)


def _label_locked(cfg: LabelConfig, source: str) -> LabelSummary:
    from cdul_rt.api.labeler import Labeler
    from cdul_rt.labelfile import LabelWriter
    from cdul_rt.pipeline import open_session
    from cdul_rt.runmeta import RunFiles, check_resume
    from cdul_rt.vocab import load_vocabulary

    vocab = load_vocabulary(cfg.classes)
    session = open_session(cfg, vocab)
    config = recorded_config(cfg, vocab, session)
    src = source_name(source)
    if not cfg.overwrite:
        recorded = read_meta(cfg.out).get("source")
        if recorded is not None and recorded != src:
            raise CdulError(f"{cfg.out} holds labels of {recorded}, not {src}: resuming would mix the two; choose "
                            "another --out, or --overwrite to relabel from scratch")
        # a URL is no folder: runmeta's check compares resolved folder paths, which the recorded source replaces
        check_resume(cfg.out, Path(read_meta(cfg.out).get("input_resolved") or cfg.input) if recorded else cfg.input,
                     config)
    writer = LabelWriter(cfg.out, list(vocab.classes), cfg.threshold, cfg.top_k, cfg.save_parts)
    files = RunFiles(cfg.out, cfg.input, config, cfg.overwrite, {**meta_extra(cfg), "source": src})
    writer.before_open = files.commit
    skip = set() if cfg.overwrite else writer.existing()  # failures are not in it: they are retried
    summary = LabelSummary(cfg.out, skipped=len(skip))
    start = time.perf_counter()
    writer.open()
    paths: list[str] = []
    crops: list[np.ndarray] = []
    try:
        with Labeler(session, cfg, vocab) as labeler, progress_bar(cfg, None) as bar:
            def flush() -> None:
                if not paths:
                    return
                files.commit()
                out = labeler.score_crops(np.concatenate(crops))
                refused = writer.write_batch(paths, out["S_final"], out["S_global"], out["S_ag"])
                for rel, reason in refused:
                    fail(rel, reason)
                summary.labeled += len(paths) - len(refused)
                bar.update(len(paths))
                paths.clear()
                crops.clear()

            def fail(rel: str, reason: str) -> None:
                files.add_failure(rel, reason)
                summary.add_failure(rel, reason)

            for path, c, reason in decoded_items(source, skip, cfg.grid, session.preprocess, cfg.max_pixels,
                                                 cfg.jpeg_draft):
                if c is None:
                    fail(path, reason or "unknown")
                    continue
                paths.append(path)
                crops.append(c)
                if len(paths) >= cfg.batch_size:
                    flush()
            flush()
        files.commit()
    finally:
        summary.seconds = time.perf_counter() - start
        if files.committed:
            writer.close(finalize=True)
        files.close()
    write_run_meta(cfg, config, "complete", summary)
    return summary


__all__ = ["decoded_items", "is_streamed_source", "label_source"]
