"""``cdul-rt label``: CDUL pseudo labels for every image in a folder."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cdul_rt.cli.options import aggregation_options, model_options, vocab_options


def given_options(ctx: click.Context, names) -> set[str]:
    """Which of ``names`` the user set (command line or environment), as opposed to their defaults."""
    from click.core import ParameterSource

    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    return {n for n in names if ctx.get_parameter_source(n) not in defaults}


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


@click.command("label")
@click.argument("images")  # a folder or file; with --cluster ray also an fsspec URL (s3://..., gs://...)
@click.option("--out", "-o", default=None,
              help="Output file: .jsonl (default), .csv, .parquet or .npz, or an fsspec URL (s3://bucket/x.jsonl). "
                   "Default: <IMAGES>.labels.jsonl next to it.")
@model_options
@vocab_options
@click.option("--grid", "-g", default=3, show_default=True, help="Snippet grid size g (1 + g^2 crops per image).")
@aggregation_options("label")
@click.option("--threshold", default=0.5, show_default=True, type=float,
              help="Classes with S_final at or above this are listed under 'labels'.")
@click.option("--top-k", type=int, default=None, help="List the k best classes under 'labels' instead.")
@click.option("--save-parts", is_flag=True, help="Also write S_global and S_ag per image.")
@click.option("--save-embeddings", is_flag=True,
              help="Also keep each image's L2-normalised CLIP embedding (float16, from the same encoder call): "
                   "OUT.embeddings.npy + .paths.json for JSONL/CSV, an 'embedding' column (Parquet, Ray shards) or "
                   "array (npz). "
                   "`cdul-rt similar` searches them.")
@click.option("--batch-size", "-b", type=int, default=None,
              help="Images per encoder call (x(1+g^2) crops). Default: 64 on CUDA, 8 on the CPU.")
@click.option("--workers", "-j", default=_default_workers(), show_default=True,
              help="Decode worker processes (0 = decode in the main process).")
@click.option("--runtime", default="auto", show_default=True,
              help="torch, onnxruntime, tensorrt, or auto: the fastest path whose labels stay within the quality "
                   "margin (README 'Default runtime and precision'); on CPU onnxruntime fp32 when installed (the "
                   "first run exports the model to ONNX into the cache), else torch fp32.")
@click.option("--precision", default=None,
              help="fp32, bf16 (torch, CPU with AMX/AVX512-BF16), fp16, int8. Default: fp32 on CPU; on CUDA fp16 "
                   "for tensorrt/onnxruntime, fp32 for torch; with --engine-dir the folder's.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--engine-dir", type=click.Path(file_okay=False), default=None,
              help="Exported artifact folder for --runtime onnxruntime/tensorrt; the model, grid, mode, zeta, "
                   "lambda, precision, classes and template not given here come from its manifest.")
@click.option("--ort-tensorrt", is_flag=True,
              help="--runtime onnxruntime --device cuda: run the labeler on onnxruntime's TensorRT execution provider "
                   "(fp16 per --precision, engine and timing caches in the cdul-rt cache, profile sized in images).")
@click.option("--trt-workspace", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True,
              help="--runtime tensorrt: builder workspace limit in GiB for the engine built on first use (as "
                   "`export --trt-workspace`).")
@click.option("--trt-typing", type=click.Choice(["flag", "strong"]), default=None,
              help="--runtime tensorrt: fp16 path of the engine built on first use (as `export --trt-typing`). "
                   "Default: flag on TRT 10, strong on TRT 11.")
@click.option("--trt-chunk-images", type=click.IntRange(1), default=None,
              help="--runtime tensorrt: images per engine run inside one batch (default: two chunks per batch, so "
                   "the upload of one overlaps the compute of the other).")
@click.option("--max-pixels", default=178_956_970, show_default=True,
              help="Refuse images larger than this many pixels (decompression-bomb guard).")
@click.option("--compile", is_flag=True,
              help="torch runtime: torch.compile the visual encoder (inductor, frozen weights). Compiling takes "
                   "minutes once per process; worth it for large folders (see BENCHMARKS.md).")
@click.option("--jpeg-draft", is_flag=True,
              help="Decode large JPEGs downscaled (DCT domain; 2.8-4.4x faster decode measured) as far as every "
                   "tile stays >= the model input size; scores change slightly (see BENCHMARKS.md).")
@click.option("--decode", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="gpu: JPEGs decoded in batches on the GPU (nvJPEG), crops resized and normalised there; needs "
                   "--device cuda. cpu: worker processes with PIL. auto: gpu with --device cuda when nvJPEG works, "
                   "else cpu. A resume keeps the path of the first run.")
@click.option("--overwrite", is_flag=True, help="Discard an existing output and start fresh (default: resume).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--cluster", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine. ray: a Ray Data job (pip install 'cdul-rt[ray]'); IMAGES may be an fsspec "
                   "URL and OUT is a directory of Parquet shards.")
@click.option("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else start one here).")
@click.option("--actors", type=int, default=None, help="Ray: engine actors (default: sized from the cluster).")
@click.option("--cpus-per-actor", type=float, default=None, help="Ray: CPUs per engine actor (default 1).")
@click.option("--gpus-per-actor", type=float, default=None,
              help="Ray: GPUs per engine actor (default 1 with --device cuda, else 0).")
@click.option("--server", default=None,
              help="Get the scores from `cdul-rt serve` at http://HOST:PORT or grpc://HOST:PORT (its model, "
                   "vocabulary and options); same label files, resume and failures as a local run.")
@click.option("--in-flight", default=16, show_default=True, help="--server: requests kept in flight.")
def command(images: str, out: Path | None, quiet: bool, cluster: str, ray_address: str | None, actors: int | None,
            cpus_per_actor: float | None, gpus_per_actor: float | None, server: str | None, in_flight: int,
            **opts) -> None:
    """Label every image under IMAGES (recursively) with CDUL pseudo labels.

    Re-running the same command resumes: images already in OUT are skipped. Unreadable files are listed in
    OUT.failures.jsonl and never stop the run.
    """
    from cdul_rt.artifacts.folder import FOLDER_OPTIONS
    from cdul_rt.engines.auto import label_options
    from cdul_rt.pipeline import LabelConfig, label_folder

    if server is not None:
        from cdul_rt.serve.cli_client import label_command_with_server

        return label_command_with_server(images, Path(out) if out is not None else None, quiet, cluster, server,
                                         in_flight, opts)
    from cdul_rt.distributed.sources import is_url

    out_url = out if out is not None and is_url(out) else None  # staged locally, uploaded (remote_out.py)
    out = Path(out) if out is not None else None
    opts = label_options(opts, given_options(click.get_current_context(), FOLDER_OPTIONS))  # the default rule
    if opts["ort_tensorrt"]:
        from cdul_rt.engines.gpu import check_ort_tensorrt

        check_ort_tensorrt(opts["runtime"], opts["device"])
    if cluster == "ray":
        if opts["decode"] == "gpu":
            raise click.UsageError("--decode gpu is not available with --cluster ray yet (its actors decode on the "
                                   "CPU); drop --decode or use --decode cpu")
        from cdul_rt.distributed.ray_label import RayOptions, default_out, label_with_ray
        from cdul_rt.distributed.remote_out import redact

        out = out or default_out(images)
        cfg = LabelConfig(input=Path(redact(images)), out=out, progress=not quiet, **opts)
        summary = label_with_ray(cfg, RayOptions(ray_address, actors, cpus_per_actor, gpus_per_actor,
                                                 out_url=out_url), images)
        out = redact(out_url) if out_url else out
        failures_at = f"{out}/_failures"
    else:
        from cdul_rt.distributed.stream_label import is_streamed_source, label_source

        streamed = is_streamed_source(images)  # an fsspec URL or webdataset shards (cdul_rt/distributed/wds.py)
        if not streamed and not Path(images).exists():
            raise click.BadParameter(f"Path {images!r} does not exist.", param_hint="'IMAGES'")
        if out is None and streamed:
            raise click.UsageError("--out is required for URL and webdataset inputs (e.g. --out labels.jsonl)")
        from cdul_rt.distributed.remote_out import label_to_url, redact

        out = out or Path(images).with_name(Path(images).name.rstrip("/") + ".labels.jsonl")
        cfg = LabelConfig(input=Path(redact(images)), out=out, progress=not quiet, **opts)

        def run(c: LabelConfig):
            return label_source(c, images) if streamed else label_folder(c)

        summary = label_to_url(out_url, cfg, run) if out_url else run(cfg)
        out = redact(out_url) if out_url else out
        failures_at = f"{out}.failures.jsonl"
    report_summary(summary, out, failures_at)


def report_summary(summary, out, failures_at) -> None:
    """The closing lines of a label run (local, Ray or --server)."""
    click.echo(f"labeled {summary.labeled} images in {summary.seconds:.1f}s ({summary.images_per_second:.2f} img/s)"
               + (f", {summary.skipped} already done" if summary.skipped else "") + f" -> {out}")
    if summary.failed:
        click.secho(f"{summary.failed} images could not be read (see {failures_at}):", fg="yellow", err=True)
        from cdul_rt.labelfile import display_name

        for path, reason in summary.failures[:10]:
            click.echo(f"  {display_name(path)}: {reason}", err=True)
