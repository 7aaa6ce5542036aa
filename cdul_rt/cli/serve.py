"""``cdul-rt serve``: CDUL labels and CLIP embeddings from a running Triton Inference Server (PyTriton)."""

from __future__ import annotations

import click

from cdul_rt.cli.label import given_options
from cdul_rt.cli.options import aggregation_options, model_options, vocab_options
from cdul_rt.serve.server import DEFAULT_MAX_REQUEST_BYTES


@click.command("serve")
@model_options
@vocab_options
@click.option("--engine-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Serve an exported artifact folder (runtime onnxruntime unless --runtime says otherwise); the "
                   "model, grid, mode, zeta, lambda and precision not given here come from its manifest.")
@click.option("--runtime", default=None,
              help="torch, onnxruntime, tensorrt or auto. Default: label's rule (onnxruntime on CPU when "
                   "installed, else torch; the graph runtime with --engine-dir).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--precision", default=None,
              help="fp32, bf16, fp16, int8 (default: label's rule, fp32 on CPU; the folder's with --engine-dir).")
@click.option("--grid", "-g", type=int, default=None, help="Snippet grid size g (default 3, or the folder's).")
@aggregation_options("serve")
@click.option("--threshold", default=0.5, show_default=True, type=float,
              help="Classes with S_final at or above this are returned as 'labels'.")
@click.option("--top-k", type=int, default=None, help="Return the k best classes as 'labels' instead.")
@click.option("--max-pixels", default=178_956_970, show_default=True,
              help="Refuse images larger than this many pixels (decompression-bomb guard, as label).")
@click.option("--jpeg-draft", is_flag=True, help="Decode large JPEGs downscaled, as label --jpeg-draft.")
@click.option("--max-batch", default=64, show_default=True,
              help="Most images Triton's dynamic batcher merges into one execution.")
@click.option("--max-queue-delay-us", default=2000, show_default=True,
              help="How long Triton may hold a request to merge it with others (microseconds).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The default serves this machine only; 0.0.0.0 serves the network.")
@click.option("--http-port", default=8000, show_default=True, help="HTTP/REST port (Triton's default).")
@click.option("--grpc-port", default=8001, show_default=True, help="gRPC port (Triton's default).")
@click.option("--metrics-port", default=8002, show_default=True, help="Prometheus metrics port (Triton's default).")
@click.option("--max-request-bytes", default=DEFAULT_MAX_REQUEST_BYTES, show_default=True,
              help="Refuse a request whose images add up to more bytes (that request alone fails).")
@click.option("--workers", "-j", default=2, show_default=True, help="Decode threads in the server.")
@click.option("--verbose", "-v", is_flag=True, help="Triton's and PyTriton's own logs.")
def command(host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int, max_queue_delay_us: int,
            max_request_bytes: int, workers: int, verbose: bool, **opts) -> None:
    """Serve CDUL labels and CLIP embeddings on a Triton Inference Server (models: labels, image_embedding,
    text_embedding, metadata). Stop with Ctrl-C or SIGTERM: in-flight requests finish first.

    Needs `pip install 'cdul-rt[serve]'` (PyTriton ships the server). Clients: `cdul-rt label DIR --server URL`,
    tritonclient or PyTriton's ModelClient (README "Serve").
    """
    from cdul_rt import Labeler
    from cdul_rt.artifacts.folder import FOLDER_OPTIONS
    from cdul_rt.serve.server import ServeOptions, _require_pytriton, check_ports_free, serve

    _require_pytriton()
    sopts = ServeOptions(host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us, max_request_bytes,
                         workers, verbose)
    sopts.check()
    check_ports_free(sopts)  # before the model loads (minutes for a large one)
    given = given_options(click.get_current_context(), FOLDER_OPTIONS)
    opts = {k: (v if k not in FOLDER_OPTIONS or k in given else None) for k, v in opts.items()}
    click.echo("cdul-rt serve: loading the model...", err=True)
    with Labeler.open(**opts) as labeler:
        serve(labeler, sopts, echo=click.echo)
    click.echo("cdul-rt serve: stopped", err=True)
