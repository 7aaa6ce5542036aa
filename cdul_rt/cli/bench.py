"""``cdul-rt bench``: throughput of every runtime and precision here, against the naive loop and the roofline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cdul_rt.presets import DEFAULT_MODEL


def _print_summary(result) -> None:
    from cdul_rt.bench.report import default_ratio, format_table

    m = result.machine
    click.echo(f"\n{result.model}: {result.flops_per_crop / 1e9:.2f} GFLOP per crop, {result.crops_per_image} "
               f"crops per image; roofline = best GEMM measured per precision: "
               + ", ".join(f"{p} {f / 1e9:.0f} {'GOP' if p == 'int8' else 'GFLOP'}/s ({lib})"
                           for p, (f, lib) in result.peaks.items())
               + f"\n{m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}, bf16 {m['bf16']}, "
               f"AMX {m['amx']}); load average {m['load_avg'][0]:.2f} -> {m['load_avg_after'][0]:.2f}\n")
    click.echo(format_table(result.rows))
    pair = default_ratio(result.rows)
    if pair:
        default, best = pair
        path = default.note.partition("): ")[2].split(";")[0]  # "label without speed flags (...): KEY; ..."
        click.echo(f"\ndefault label ({path}) {default.images_per_s:.2f} img/s = "
                   f"{100 * default.images_per_s / best.images_per_s:.0f}% of the fastest end-to-end row within the "
                   f"quality margin ({best.runtime}/{best.precision}, {best.images_per_s:.2f} img/s)")


def _quality(scenes: int, json_path: Path | None, quiet: bool) -> None:
    from cdul_rt.bench.quality import QualityConfig, format_quality, run_quality

    result = run_quality(QualityConfig(scenes=scenes, log=(lambda m: None) if quiet else
                                       (lambda m: click.echo(m, err=True))))
    click.echo(f"\nlabel quality by precision: {result['model']} on {result['scenes']} synthetic scenes "
               f"(seed {result['seed']}), zeta {result['zeta']}, lambda {result['lambda']}; differences against "
               f"torch fp32\n")
    click.echo(format_quality(result))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))


def _cuda_e2e(ctx, model, images, image_size, batch_size, workers, naive_images, classes, work_dir, json_path,
              device, log) -> None:
    """``--device cuda``: the end-to-end rows of bench/gpu_check.sh (cdul_rt.bench.e2e), printed and saved."""
    from dataclasses import asdict

    from click.core import ParameterSource

    from cdul_rt.bench.e2e import E2EConfig, format_rows, run_e2e
    from cdul_rt.bench.images import parse_size

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)

    cfg = E2EConfig(model=model, device=device,
                    images=images if given("images") else 2000, image_size=parse_size(image_size),
                    batch_size=batch_size if given("batch_size") else 64,
                    workers=workers if given("workers") else 14,
                    naive_images=naive_images if given("naive_images") else 100, classes=classes,
                    work_dir=work_dir / "e2e")
    result = run_e2e(cfg, log=log)
    click.echo(f"\n{result.machine.get('gpu', device)}, {cfg.model} {cfg.precision}, {cfg.images} JPEGs "
               f"{cfg.image_size[0]}x{cfg.image_size[1]}, grid {cfg.grid}\n")
    click.echo(format_rows(result.rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"config": result.config, "machine": result.machine,
                                         "rows": [asdict(r) for r in result.rows]}, indent=2))


@click.command("bench")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="open_clip architecture or config JSON.")
@click.option("--pretrained", default="none", show_default=True,
              help="Weights tag; 'none' = random weights (speed does not depend on the weights).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Local CLIP checkpoint file.")
@click.option("--images", "-n", default=16, show_default=True, help="Generated JPEGs labeled per end-to-end run.")
@click.option("--image-size", default="640x480", show_default=True, help="WIDTHxHEIGHT of the generated JPEGs.")
@click.option("--batch-size", "-b", default=8, show_default=True, help="Images per encoder call.")
@click.option("--workers", "-j", default=2, show_default=True, help="Decode worker processes.")
@click.option("--repeats", "-r", default=3, show_default=True, help="Timed runs per row (after a warm-up).")
@click.option("--naive-images", default=3, show_default=True, help="Images timed in the naive loop (0: skip it).")
@click.option("--classes", "-c", default="coco", show_default=True, help="Vocabulary.")
@click.option("--only", multiple=True, help="Measure only runtime/precision/device starting with this (repeatable), "
              "e.g. --only torch/bf16 or --only onnxruntime; the fp32 reference always runs.")
@click.option("--no-auto", is_flag=True, help="Skip the default row (label without speed flags = --runtime auto).")
@click.option("--no-compile", is_flag=True, help="Skip the torch.compile row (compiling takes minutes).")
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Exported artifacts for the onnxruntime / tensorrt rows.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-work"),
              show_default=True, help="Where generated images and label files go.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every figure (with the raw samples) to this JSON file.")
@click.option("--floor", "floors", multiple=True,
              help="[ROW:]METRIC=MIN; exit 1 when not met. METRIC: speedup, images_per_s, roofline (fraction), "
                   "default_share (default row / fastest end-to-end row within the quality margin); ROW: "
                   "runtime/precision/scope (default: best end-to-end row), e.g. --floor speedup=3.")
@click.option("--quality", is_flag=True,
              help="Measure label quality by runtime and precision instead of speed: mAP of every mode, top-1 and "
                   "label-set agreement and S_final differences against torch fp32, on the synthetic world with the "
                   "shipped tiny CLIP, at its own logit scale and at real CLIP's 100.")
@click.option("--scenes", default=200, show_default=True, help="--quality: synthetic scenes evaluated.")
@click.option("--matmul-size", default=2048, show_default=True, hidden=True, help="n of the roofline matmul.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu: every CPU runtime. cuda[:N]: the end-to-end folder comparison on the GPU (naive loop, "
                   "torch DataLoader peer, label --decode cpu and --decode gpu, encoder alone; --images default "
                   "2000 there, --batch-size 64, --workers 14 unless given).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def command(model, pretrained, weights, images, image_size, batch_size, workers, repeats, naive_images, classes,
            only, no_auto, no_compile, engine_dir, work_dir, json_path, floors, quality, scenes, matmul_size, device,
            quiet) -> None:
    """Benchmark labeling throughput: end to end (decode .. write) and encoder only, every runtime here.

    Speed-up is over the loop a researcher writes with open_clip (per crop, batch of 1); roofline is the achieved
    fraction of the best GEMM FLOP/s measured in the run at the row's precision (torch, onnxruntime; int8 from
    onnxruntime's MatMulInteger), with the library that set it. All rows run side by side in one process, so the
    ratios hold on a shared machine. With --quality: label quality by precision instead (see --quality).
    """
    if quality:
        return _quality(scenes, json_path, quiet)
    from cdul_rt.bench.floors import check_floors, parse_floor
    from cdul_rt.bench.harness import BenchConfig, run_bench
    from cdul_rt.bench.images import parse_size
    from cdul_rt.bench.report import rows_json

    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if device.startswith("cuda"):
        _cuda_e2e(click.get_current_context(), model, images, image_size, batch_size, workers, naive_images,
                  classes, work_dir, json_path, device, log)
        return
    parsed = [parse_floor(f) for f in floors]  # bad specs fail before minutes of measuring
    cfg = BenchConfig(model=model, pretrained=pretrained, weights=weights, images=images,
                      image_size=parse_size(image_size), batch_size=batch_size, workers=workers, repeats=repeats,
                      naive_images=naive_images, classes=classes, only=tuple(only), auto=not no_auto, compile=not no_compile,
                      work_dir=work_dir, engine_dir=engine_dir, matmul_size=matmul_size,
                      log=log)
    result = run_bench(cfg)
    _print_summary(result)
    rows = rows_json(result.rows)
    failures = check_floors(parsed, rows)
    if json_path is not None:
        doc = {"model": result.model, "flops_per_crop": result.flops_per_crop,
               "crops_per_image": result.crops_per_image,
               "roofline": {p: {"flops": f, "library": lib} for p, (f, lib) in result.peaks.items()},
               "machine": result.machine, "config": result.config, "rows": rows,
               "floors": [{"spec": s, "met": not any(f.startswith(p.describe()) for f in failures)}
                          for s, p in zip(floors, parsed)]}
        json_path.write_text(json.dumps(doc, indent=2))
    if failures:
        for f in failures:
            click.secho(f"floor not met: {f}", fg="red", err=True)
        raise SystemExit(1)
