"""``cdul-rt export``: CLIP -> ONNX artifact folder (visual, text, fused labeler, manifest), optionally verified,
compiled to TensorRT or laid out as a Triton repository; or a trained classifier (``--classifier RUN``)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from cdul_rt.cli.options import aggregation_options, model_options, vocab_options
from cdul_rt.vocab import DEFAULT_TEMPLATE


def default_out(model: str, pretrained: str | None, precision: str, grid: int, mode: str) -> Path:
    name = Path(model).stem if model.endswith(".json") else model
    tag = f".{pretrained}" if pretrained else ""
    extra = "" if (grid, mode) == (3, "cdul") else f"-g{grid}-{mode}"
    return Path("engines") / f"{name}{tag}-{precision}{extra}"


def label_command(out: Path, opts: dict, runtime: str = "onnxruntime", device: str | None = None) -> str:
    """The ``cdul-rt label`` line that uses this folder. The folder is self-describing (model, weights, grid, mode,
    zeta, lambda, precision, vocabulary and template come from its manifest), so no option names them."""
    args = ["cdul-rt", "label", "IMAGES", "--runtime", runtime, "--engine-dir", str(out)]
    if device:
        args += ["--device", device]
    return " ".join(shlex.quote(a) if a != "IMAGES" else a for a in args)


def _verify(out: Path, bundle, images: tuple[Path, ...]) -> None:
    from cdul_rt.errors import CdulError
    from cdul_rt.export.verify import failures, format_table, load_images, verify_folder

    rows = verify_folder(out, bundle, load_images(list(images)) if images else None)
    source = f"{len(images)} image path(s)" if images else "generated sample images"
    click.echo(format_table(rows, f"parity vs torch fp32 ({source}):"))
    bad = failures(rows)
    if bad:
        raise CdulError("parity check failed: " + "; ".join(f"{r.graph} {r.metric} = {r.value:.3g} (limit "
                                                            f"{r.limit})" for r in bad))


def _trt_config(precision: str, max_images: int, opt_images: int, max_classes: int, workspace: float,
                typing: str | None, opt_level: int | None, verbose: bool):
    """The TensorRT build settings of the --trt-* options (validated here, before any export)."""
    from cdul_rt.engines.trt.profiles import ProfileSpec
    from cdul_rt.engines.trt.build import TrtBuildConfig

    spec = ProfileSpec(1, opt_images, max_images, 1, min(80, max_classes), max_classes).validate()
    return TrtBuildConfig(precision=precision if precision != "int8" else "fp16", typing=typing, profile=spec,
                          workspace_gib=workspace, builder_optimization_level=opt_level, verbose=verbose)


def _triton_options(trt_cfg):
    from cdul_rt.export.triton import TritonOptions

    p = trt_cfg.profile
    return TritonOptions(max_images=p.max_images, opt_images=p.opt_images, max_classes=p.max_classes, trt=trt_cfg)


@click.command("export")
@model_options
@vocab_options
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Artifact folder. Default: engines/<model>-<precision>.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16: fp16 weights, LayerNorm/softmax/reductions fp32, fp32 I/O. int8: dynamic quantisation (CPU).")
@click.option("--grid", "-g", default=3, show_default=True, help="Snippet grid size g baked into the labeler graph.")
@aggregation_options("export")
@click.option("--opset", default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--verify", is_flag=True, help="Print a parity table against the torch fp32 reference; fail if off.")
@click.option("--verify-images", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Images (files or folders) for --verify; default: generated sample images.")
@click.option("--engine", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True,
              help="tensorrt: also build TensorRT engines from the exported graphs (needs TensorRT and a GPU).")
@click.option("--trt-max-images", default=32, show_default=True,
              help="TensorRT profile: the most images per engine run (x(1+g^2) crops); sets activation memory.")
@click.option("--trt-opt-images", default=8, show_default=True,
              help="TensorRT profile: the images per run the engine is tuned for (label's --batch-size).")
@click.option("--trt-max-classes", default=1024, show_default=True,
              help="TensorRT profile: the largest vocabulary the labeler and text engines accept.")
@click.option("--trt-workspace", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True,
              help="TensorRT builder workspace limit in GiB.")
@click.option("--trt-typing", type=click.Choice(["flag", "strong"]), default=None,
              help="TensorRT fp16 path: flag (TRT 10, fp32 graph + BuilderFlag.FP16) or strong (the fp16 graph, "
                   "strongly typed; the only path on TRT 11). Default: flag on TRT 10, strong on TRT 11.")
@click.option("--trt-opt-level", type=click.IntRange(0, 5), default=None,
              help="TensorRT builder optimisation level (default: TensorRT's, 3).")
@click.option("--verbose", is_flag=True, help="TensorRT builder log at VERBOSE level.")
@click.option("--triton", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository to this folder.")
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Export a trained classifier run folder instead of CLIP.")
def command(out: Path | None, verify: bool, verify_images: tuple[Path, ...], engine: str, triton: Path | None,
            classifier: Path | None, trt_max_images: int, trt_opt_images: int, trt_max_classes: int,
            trt_workspace: float, trt_typing: str | None, trt_opt_level: int | None, verbose: bool, **opts) -> None:
    """Export CLIP (visual, text and fused labeler graphs) to an ONNX artifact folder.

    A new vocabulary later needs no re-export: `label` encodes it with text.onnx (or reads the embeddings stored
    for the --classes given here).
    """
    trt_cfg = _trt_config(opts["precision"], trt_max_images, trt_opt_images, trt_max_classes, trt_workspace,
                          trt_typing, trt_opt_level, verbose)
    if engine == "tensorrt" and opts["precision"] == "int8":
        from cdul_rt.errors import CdulError

        raise CdulError("--engine tensorrt builds fp32 or fp16 engines; the int8 export is onnxruntime's dynamic "
                        "quantisation for CPUs, which TensorRT does not compile. Use --precision fp16 (or fp32)")
    if classifier is not None:
        from cdul_rt.export.classifier import export_classifier, format_parity_table

        out = out or Path("engines") / f"classifier-{classifier.name}"
        precisions = ("fp32", "fp16") if opts["precision"] == "fp32" else (opts["precision"],)
        manifest = export_classifier(classifier, out, precisions, opset=opts["opset"], check=verify,
                                     images=list(verify_images) or None)
        if verify and manifest.get("verify"):
            click.echo(format_parity_table(manifest["verify"]))
        click.echo(f"exported the classifier of {classifier} to {out}")
        if engine == "tensorrt":
            from cdul_rt.engines.trt.build import build_engines

            build_engines(out, kinds=("classifier",), cfg=trt_cfg, log=click.echo)
        if triton is not None:
            from cdul_rt.export.triton import write_triton_repository

            write_triton_repository(out, triton, _triton_options(trt_cfg), models=("classifier",), log=click.echo)
        click.echo(f"predict with:\n  cdul-rt predict IMAGES --engine {out} --out predictions.jsonl")
        return
    from cdul_rt.export.clip import ExportOptions, export_clip
    from cdul_rt.models import load_clip

    out = out or default_out(opts["model"], opts["pretrained"], opts["precision"], opts["grid"], opts["mode"])
    export_opts = ExportOptions(out=out, **opts)
    bundle = load_clip(export_opts.model_request.spec())  # loaded once: the export and --verify share it
    export_clip(export_opts, log=lambda m: click.echo(m, err=True), bundle=bundle)
    if verify:
        _verify(out, bundle, verify_images)
    if engine == "tensorrt":
        from cdul_rt.engines.trt.build import build_engines

        build_engines(out, cfg=trt_cfg, log=click.echo)
    if triton is not None:
        from cdul_rt.export.triton import write_triton_repository

        write_triton_repository(out, triton, _triton_options(trt_cfg), classes=opts["classes"],
                                template=opts["template"], log=click.echo)
    trt = {"runtime": "tensorrt", "device": "cuda"} if engine == "tensorrt" else {}
    click.echo(f"artifacts in {out}; label with:\n  {label_command(out, opts, **trt)}")

