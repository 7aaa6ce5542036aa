"""`cdul-rt predict`: multi-label predictions for a folder with a trained classifier (torch or exported ONNX)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("predict")
@click.argument("images", type=click.Path(exists=True, path_type=Path))
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A `cdul-rt train` run folder (runs the model with torch).")
@click.option("--engine", "--engine-dir", "engine", type=click.Path(exists=True, path_type=Path), default=None,
              help="An exported classifier folder or classifier*.onnx (runs with onnxruntime, no torch); the folder's "
                   "manifest says the classes and preprocessing.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="Which exported graph to run (with --engine DIR). Default: fp32 when the folder has it.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output label file: .jsonl, .csv, .parquet or .npz (as `label` writes).")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Classes with probability at or above this are listed under 'labels'.")
@click.option("--top-k", type=int, default=None, help="List the k most probable classes instead.")
@click.option("--batch-size", "-b", type=int, default=32, show_default=True)
@click.option("--workers", "-j", type=int, default=0, show_default=True,
              help="Decode worker processes (label's shared-memory decode pool); 0: decode in this process.")
@click.option("--threads", type=int, default=0, help="CPU threads of the runtime (0: its default).")
@click.option("--overwrite", is_flag=True, help="Discard an existing output (default: resume it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(images: Path, run_dir: Path | None, engine: Path | None, precision: str | None, out: Path, threshold: float,
            top_k: int | None, batch_size: int, workers: int, threads: int, overwrite: bool, quiet: bool) -> None:
    """Predict labels for every image under IMAGES; re-running resumes, unreadable files are listed, not fatal."""
    from cdul_rt.errors import CdulError
    from cdul_rt.train.predict import predict_folder

    if (run_dir is None) == (engine is None):
        raise CdulError("give exactly one of --run RUN_DIR (torch) or --engine DIR (exported ONNX classifier)")
    from cdul_rt.api.classifier import Classifier

    clf = Classifier.open(run_dir or engine, runtime="torch" if run_dir else "onnxruntime", precision=precision,
                          threshold=threshold, top_k=top_k, batch_size=batch_size, threads=threads)  # checks them
    summary = predict_folder(clf, images, out, threshold, top_k, batch_size, workers, overwrite,
                             progress=not quiet, meta={"precision": clf.runner.precision})
    click.echo(f"predicted {summary.predicted} images in {summary.seconds:.1f}s"
               + (f", {summary.skipped} already done" if summary.skipped else "") + f" -> {out}")
    if summary.failures:
        click.secho(f"{len(summary.failures)} images could not be read (see {out}.failures.jsonl)", fg="yellow",
                    err=True)
    click.echo(f"next: cdul-rt eval --pred {out} --gt GROUND_TRUTH")
