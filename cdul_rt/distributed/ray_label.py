"""``cdul-rt label --cluster ray``: the labeling pipeline as a Ray Data job.

    paths (driver: listed, minus those already written)
      -> decode stage: Ray tasks, 1 CPU each, ``load_crops`` -> uint8 crops (failures become rows with a reason)
      -> engine stage: an actor pool, one labeler session (any runtime) per actor, GPUs per actor when asked
      -> driver: atomic Parquet shards + failures shards (:mod:`cdul_rt.distributed.shards`), meta sidecar

Ray Data's streaming executor overlaps the two stages and bounds the crops in flight. Results are small (C floats
per image against ~1.5 MB of crops), so the driver writes them: the output directory needs to exist only where the
driver runs, and every shard is renamed into place whole. Ray retries the tasks of a crashed actor on a restarted
one; the writer drops any path it has already written in this run, so retries never duplicate a row.

Names (``path``, ``uri``, webdataset keys) travel through Ray's Arrow blocks as bytes (``os.fsencode``, undone by
``os.fsdecode`` where they are used): a file name that is not valid UTF-8 is a string with lone surrogates in Python
(``surrogateescape``), which an Arrow string column refuses. The shard writer then stores it as plain ``label``'s
Parquet does (readable ``path`` plus exact ``path_bytes``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from cdul_rt.distributed.shards import ShardWriter, done_paths, prepare_output
from cdul_rt.distributed.sizing import RayPlan, plan_report, plan_resources
from cdul_rt.distributed.sources import decode_uri, is_url, iter_listing
from cdul_rt.errors import CdulError, require
from cdul_rt.labelfile import display_name, sidecar
from cdul_rt.pipeline import LabelConfig, LabelSummary
from cdul_rt.preprocess import PreprocessConfig
from cdul_rt.runmeta import (check_recorded_config, config_differences, recorded_config, update_meta,
                             write_run_meta)

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class RayOptions:
    """The Ray knobs of ``label --cluster ray``; ``None`` means sized from the cluster (see ``sizing``)."""

    address: str | None = None  # None: $RAY_ADDRESS if set, else start a local instance
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    shard_rows: int = 50_000
    flush_seconds: float = 60.0
    out_url: str | None = None  # --out on an object store (s3://...): cfg.out is then its local staging copy


# -- the two stages (run in Ray workers) ----------------------------------------------------------------------------
def _names(names):
    """Names as an Arrow column that any file name fits (see the module docstring)."""
    import pyarrow as pa

    return pa.array([os.fsencode(n) for n in names], pa.binary())


def decode_batch(batch: dict[str, np.ndarray], grid: int, preprocess: PreprocessConfig, max_pixels: int,
                 jpeg_draft: bool = False) -> dict[str, np.ndarray]:
    """Rows ``path, uri`` (bytes) -> ``path, crops uint8 [n, 1+g^2, S, S, 3], error`` ("" when decoded; zero crops
    if not)."""
    s, k = preprocess.size, 1 + grid * grid
    crops = np.zeros((len(batch["uri"]), k, s, s, 3), np.uint8)
    errors = []
    for i, uri in enumerate(batch["uri"]):
        d = decode_uri(os.fsdecode(uri), grid, preprocess, max_pixels, jpeg_draft)
        if d.crops is None:
            errors.append(display_name(d.error or "unknown decoding error"))  # Arrow text (a reason may quote a name)
        else:
            crops[i] = d.crops
            errors.append("")
    return {"path": batch["path"], "crops": crops, "error": np.asarray(errors, dtype=object)}


def node_name() -> str:
    """This process's node, named so an operator can find it: host, Ray node id (short) and IP. Several Ray nodes
    can share a host (``ray.cluster_utils.Cluster``, containers), so the host name alone is not enough."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():  # get_runtime_context() would start a Ray instance
        return os.uname().nodename
    try:
        ctx = ray.get_runtime_context()
        return f"{os.uname().nodename} (Ray node {ctx.get_node_id()[:12]}, {ray.util.get_node_ip_address()})"
    except Exception:  # noqa: BLE001 - outside Ray (unit tests): the host is all there is
        return os.uname().nodename


class LabelActor:
    """One labeler session per actor; refuses to run if it would label differently from what the meta records."""

    def __init__(self, cfg: LabelConfig, expected: dict) -> None:
        from cdul_rt.pipeline import open_session
        from cdul_rt.vocab import load_vocabulary

        vocab = load_vocabulary(cfg.classes)
        self.session = open_session(cfg, vocab)
        diff = config_differences(recorded_config(cfg, vocab, self.session), expected)
        if diff:  # e.g. a node with other weights behind the same --weights path
            raise CdulError(f"an actor on {node_name()} loaded a different labeler ({', '.join(diff)} "
                            "differ); every node must see the same model files")
        from cdul_rt.api.labeler import Labeler  # the same scoring path as `label` and the Python API

        self.labeler = Labeler(self.session, cfg, vocab)
        self.save_parts, self.save_embeddings = cfg.save_parts, cfg.save_embeddings
        self.node = node_name()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([e == "" for e in batch["error"]], dtype=bool)
        n, c = len(ok), self.session.text_embeddings.shape[0]
        outs = {k: np.zeros((n, c), np.float32) for k in ("S_final", "S_global", "S_ag")}
        if ok.any():
            crops = np.asarray(batch["crops"])[ok]
            s = crops.shape[-2]
            res = self.labeler.score_crops(crops.reshape(-1, s, s, 3))
            for key in outs:
                outs[key][ok] = res[key]
        result = {"path": batch["path"], "error": batch["error"], "scores": outs["S_final"],
                  "node": np.full(n, self.node, dtype=object)}  # the driver counts rows per node
        if self.save_parts:
            result.update({"global": outs["S_global"], "aggregate": outs["S_ag"]})
        if self.save_embeddings:  # float16 as stored (halves what travels to the driver); zeros for failed rows
            from cdul_rt.engines.base import image_embeddings

            emb = np.zeros((n, self.labeler.embed_dim), np.float16)
            if ok.any():
                emb[ok] = image_embeddings(res, f"the {self.session.runtime} runner")
            result["embedding"] = emb
        return result


def _describe(cfg: LabelConfig) -> tuple[dict, PreprocessConfig]:
    """The recorded config and preprocessing of ``cfg``'s labeler, computed where an actor would run."""
    from cdul_rt.pipeline import open_session
    from cdul_rt.vocab import load_vocabulary

    vocab = load_vocabulary(cfg.classes)
    session = open_session(cfg, vocab)
    return recorded_config(cfg, vocab, session), session.preprocess


# -- driver -----------------------------------------------------------------------------------------------------------
def default_out(images: str) -> Path:
    """``<images>.labels.ray/`` next to a local folder, or in the working directory for a URL."""
    name = PurePosixPath(str(images).rstrip("/")).name or "images"
    return (Path.cwd() if is_url(images) else Path(images).parent) / f"{name}.labels.ray"


def _describe_where_actors_run(ray, cfg: LabelConfig, plan: RayPlan) -> tuple[dict, PreprocessConfig]:
    """A CPU labeler is described here (no extra worker to start); a GPU one by a task with an actor's resources,
    since the driver may have no GPU (or no TensorRT)."""
    if not plan.gpus_per_actor:
        return _describe(cfg)
    # max_calls=1: the worker that loaded a model exits instead of being reused (torch and all) for decoding
    describe = ray.remote(max_calls=1)(_describe).options(num_cpus=plan.cpus_per_actor,
                                                          num_gpus=plan.gpus_per_actor)
    try:
        return ray.get(describe.remote(cfg))
    except Exception as exc:
        raise _root_cause(exc) from None


def _validate(cfg: LabelConfig) -> None:
    # every option check of plain `label` except the two that differ here: --out is a directory (not a file with
    # a format suffix) and the input may be a URL (listed later)
    cfg.check_options()
    # runtime/precision "auto" never reach here: LabelConfig resolves them on the driver with the deterministic
    # default rule (engines/auto.py), so every actor runs the same path
    if cfg.device.startswith("cuda:") and cfg.device != "cuda:0":
        raise CdulError(f"--device {cfg.device}: with --cluster ray each actor sees only the GPUs Ray gives it; "
                        "use --device cuda and --gpus-per-actor")


def _connect(ray, address: str | None) -> bool:
    """Connect to a cluster (``address`` or $RAY_ADDRESS) or start a local one; True when we started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # Ray's default object store (30% of RAM, in shared memory used only as needed): the streaming executor keeps
    # just a few blocks of crops (~1.5 MB per image at 224 px) per stage in it. address="local": a new instance,
    # never the last cluster started on this machine (what address=None would join)
    ray.init(address="local", include_dashboard=False)
    return True


def _root_cause(exc: BaseException) -> BaseException:
    """The CdulError a Ray worker raised, if any, out of Ray's wrappers."""
    seen = exc
    while seen is not None:
        if isinstance(seen, CdulError):
            return seen
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    # an actor whose __init__ raised: Ray keeps only the text of the creation task's error (ActorDiedError)
    marker = "cdul_rt.errors.CdulError: "
    text = str(exc)
    if marker in text:
        return CdulError(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return exc


def _decode_memory(cfg: LabelConfig, preprocess: PreprocessConfig) -> int:
    """Bytes a decode task holds: its batch of uint8 crops (in and out) plus a decoded full-size image.

    Declaring it also keeps decoding a stage of its own: Ray Data fuses a task stage into the next actor stage when
    their remote args match (1 CPU each), and the actors would then decode too, serially with the engine, while the
    CPUs kept for decoding idle.
    """
    crops = cfg.batch_size * (1 + cfg.grid**2) * preprocess.size**2 * 3
    return 2 * crops + 256 * 1024**2  # a worker with numpy, PIL and pyarrow loaded


MAX_LISTING_BLOCK = 8192  # rows; ~1.8 KB of driver memory per ObjectRef (measured), so big listings use big blocks


def listing_blocks(listing, skip, rows_per_block: int, put) -> tuple[list, int]:
    """The work list as Arrow blocks handed to ``put`` (``ray.put``: the object store) as they fill: the driver keeps
    one ObjectRef per block, never the listing as Python objects. Returns the refs and the number of rows.

    Blocks start at ``rows_per_block`` rows (small jobs keep many blocks, so many decode tasks run at once) and grow
    with the listing to 1/256 of the rows so far, up to :data:`MAX_LISTING_BLOCK`: 10^7 paths make ~1,400 refs, not
    300,000 (bench/ray_scale.py listing)."""
    import pyarrow as pa

    refs, n, paths, uris = [], 0, [], []
    first = rows_per_block

    def emit() -> None:
        nonlocal n
        refs.append(put(pa.table({"path": _names(paths), "uri": _names(uris)})))
        n += len(paths)
        paths.clear()
        uris.clear()

    for p, u in listing:
        if p in skip:
            continue
        paths.append(p)
        uris.append(u)
        if len(paths) >= rows_per_block:
            emit()
            rows_per_block = min(max(first, n // 256), max(first, MAX_LISTING_BLOCK))
    if paths:
        emit()
    return refs, n


def shard_blocks(shards, done, put) -> tuple[list, int]:
    """One block per webdataset shard (a shard is a unit of work), with the keys already written in it."""
    import pyarrow as pa

    from cdul_rt.distributed.wds import done_keys

    keys = done_keys(done)
    refs = [put(pa.table({"path": _names([name]), "uri": _names([uri]),
                          "skip": pa.array([_names(sorted(keys.get(name, ())))], pa.list_(pa.binary()))}))
            for name, uri in shards]
    return refs, len(refs)


def decode_shards(batch: dict[str, np.ndarray], grid: int, preprocess: PreprocessConfig, max_pixels: int,
                  jpeg_draft: bool = False, batch_size: int = 8):
    """Rows ``path`` (shard name), ``uri``, ``skip`` (keys already written; all bytes) -> the :func:`decode_batch`
    rows of its samples, ``batch_size`` at a time, streamed from the tar (a generator: a shard never sits whole in
    memory)."""
    from cdul_rt.distributed.wds import decode_shard

    s, k = preprocess.size, 1 + grid * grid
    for uri, skip in zip(batch["uri"], batch["skip"]):
        paths, crops, errors = [], [], []

        def emit():
            out = np.zeros((len(paths), k, s, s, 3), np.uint8)
            for i, c in enumerate(crops):
                if c is not None:
                    out[i] = c
            names = np.empty(len(paths), dtype=object)  # bytes; np.asarray would make a fixed-width bytes array
            names[:] = [os.fsencode(p) for p in paths]
            return {"path": names, "crops": out, "error": np.asarray(errors, dtype=object)}

        for path, c, err in decode_shard(os.fsdecode(uri), {os.fsdecode(k) for k in skip}, grid, preprocess,
                                         max_pixels, jpeg_draft):
            paths.append(path)
            crops.append(c)
            errors.append("" if c is not None else display_name(err or "unknown decoding error"))
            if len(paths) >= batch_size:
                yield emit()
                paths, crops, errors = [], [], []
        if paths:
            yield emit()


def _build_dataset(ray, refs: list, shards: bool, cfg: LabelConfig, plan: RayPlan, config: dict,
                   preprocess: PreprocessConfig, actor_cls: type):
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar, ours
    ds = ray.data.from_arrow_refs(refs)
    kwargs = {"grid": cfg.grid, "preprocess": preprocess, "max_pixels": cfg.max_pixels, "jpeg_draft": cfg.jpeg_draft}
    if shards:  # one shard per decode task, its samples streamed out in engine-sized batches
        ds = ds.map_batches(decode_shards, batch_size=1, batch_format="numpy",
                            fn_kwargs={**kwargs, "batch_size": cfg.batch_size}, num_cpus=1,
                            memory=_decode_memory(cfg, preprocess),
                            compute=ray.data.TaskPoolStrategy(size=plan.decode_tasks))
    else:
        ds = ds.map_batches(decode_batch, batch_size=cfg.batch_size, batch_format="numpy", fn_kwargs=kwargs,
                            num_cpus=1, memory=_decode_memory(cfg, preprocess),
                            compute=ray.data.TaskPoolStrategy(size=plan.decode_tasks))
    gpu = {"num_gpus": plan.gpus_per_actor} if plan.gpus_per_actor else {}
    return ds.map_batches(actor_cls, batch_size=cfg.batch_size, batch_format="numpy",
                          fn_constructor_kwargs={"cfg": cfg, "expected": config},
                          compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus_per_actor, **gpu)


def _consume(ds, writer: ShardWriter, summary: LabelSummary, bar, nodes: dict[str, int]) -> None:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        err = np.asarray([e != "" for e in batch["error"]], dtype=bool)
        paths = [os.fsdecode(p) for p in batch["path"]]
        for node in batch.get("node", ()):
            nodes[str(node)] = nodes.get(str(node), 0) + 1
        if err.any():
            bad = [p for p, e in zip(paths, err) if e]
            reasons = [str(r) for r, e in zip(batch["error"], err) if e]
            writer.add_failures(bad, reasons)
            summary.failures.extend(list(zip(bad, reasons))[: max(0, 20 - len(summary.failures))])
            bar.set_postfix(failed=writer.failed + len(bad))
        good = ~err
        if good.any():
            parts = (batch["global"][good], batch["aggregate"][good]) if "global" in batch else (None, None)
            emb = batch["embedding"][good] if "embedding" in batch else None
            writer.add([p for p, g in zip(paths, good) if g], batch["scores"][good], *parts, embeddings=emb)
        bar.update(len(paths))


def label_with_ray(cfg: LabelConfig, opts: RayOptions | None = None, source: str | None = None,
                   actor_cls: type = LabelActor) -> LabelSummary:
    """Label every image under ``source`` (default ``cfg.input``; a folder or fsspec URL) into the shard directory
    ``cfg.out``; resumes a previous job of the same configuration. ``actor_cls`` may be a :class:`LabelActor`
    subclass (fault-injection tests)."""
    ray = require("ray", "ray")
    require("ray.data", "ray")
    opts = opts or RayOptions()
    source = str(source if source is not None else cfg.input)
    _validate(cfg)
    remote = None
    if opts.out_url:  # shards are uploaded as they are written (cdul_rt/distributed/remote_out.py)
        from cdul_rt.distributed.remote_out import RemoteOutput

        remote = RemoteOutput(opts.out_url)
        cfg = dataclasses.replace(cfg, out=remote.pull_meta(cfg.overwrite))
    out = Path(cfg.out)
    prepare_output(out, cfg.overwrite)
    started = _connect(ray, opts.address)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        plan = plan_resources(ray.cluster_resources(), opts.actors, opts.cpus_per_actor, opts.gpus_per_actor,
                              want_gpu=cfg.device.startswith("cuda"))
        report = plan_report(plan, ray.nodes())
        log.info("ray plan: %s", report)
        if cfg.progress:  # before anything is loaded: what the job will hold, node by node
            print(f"ray plan: {report}", file=sys.stderr, flush=True)
        config, preprocess = _describe_where_actors_run(ray, cfg, plan)
        return _run(ray, cfg, opts, source, plan, config, preprocess, actor_cls, remote)
    finally:
        if started:
            ray.shutdown()


def _run(ray, cfg: LabelConfig, opts: RayOptions, source: str, plan: RayPlan, config: dict,
         preprocess: PreprocessConfig, actor_cls: type, remote=None) -> LabelSummary:
    from tqdm import tqdm

    from cdul_rt.distributed.remote_out import redact
    from cdul_rt.distributed.wds import is_shard_source, list_shards

    out = Path(cfg.out)
    check_recorded_config(out, config)
    done, failed_before = remote.done_paths() if remote is not None else done_paths(out)

    def meta_written() -> None:
        if remote is not None:
            remote.push(sidecar(out, "meta"))

    shards = is_shard_source(source)
    if shards:
        refs, todo = shard_blocks(list_shards(source), done | failed_before, ray.put)
    else:  # streamed into the object store block by block (see listing_blocks)
        refs, todo = listing_blocks(iter_listing(source), _Either(done, failed_before), 4 * cfg.batch_size, ray.put)
    write_run_meta(cfg, config, "running")
    ray_meta = {"input": redact(source), "output": "parquet-shards",
                **({"output_url": redact(remote.url)} if remote is not None else {}),
                "cluster": {"engine": "ray", **dataclasses.asdict(plan)}}
    update_meta(out, ray_meta)
    meta_written()
    summary = LabelSummary(out, skipped=len(done) + len(failed_before))
    writer = ShardWriter(out, config["classes"], cfg.threshold, cfg.top_k, cfg.save_parts, opts.shard_rows,
                         opts.flush_seconds)
    writer.on_shard = remote.push if remote is not None else None
    start = time.perf_counter()
    # shards: the number of samples is known only once they are read
    bar = tqdm(desc="labeling (ray)", unit="img", total=None if shards else todo, disable=not cfg.progress,
               dynamic_ncols=True)
    nodes: dict[str, int] = {}
    try:
        if todo:
            _consume(_build_dataset(ray, refs, shards, cfg, plan, config, preprocess, actor_cls), writer, summary,
                     bar, nodes)
    except Exception as exc:
        raise _root_cause(exc) from None
    finally:
        writer.flush()  # rows already received are whole: keep them for the resume
        bar.close()
        summary.seconds = time.perf_counter() - start
    summary.labeled, summary.failed = writer.written, writer.failed
    write_run_meta(cfg, config, "complete", summary)
    ray_meta["cluster"]["rows_per_node"] = dict(sorted(nodes.items()))  # this run's, as the engine actors saw them
    update_meta(out, {**ray_meta, "shards": len(writer.shards), "duplicates_dropped": writer.duplicates})
    meta_written()
    return summary


class _Either:
    """``p in _Either(a, b)``: membership in either set, without building their union."""

    def __init__(self, *sets) -> None:
        self.sets = sets

    def __contains__(self, p) -> bool:
        return any(p in s for s in self.sets)
