"""The ``cdul-rt`` command group. Each command lives in its own module, imported only when it runs (Click's
LazyGroup pattern), so ``cdul-rt --help`` never imports torch, onnxruntime or tensorrt."""

from __future__ import annotations

import importlib
import importlib.util

import click

from cdul_rt import __version__
from cdul_rt.errors import CdulError, torch_missing

# command name -> (module, one-line help shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "label": ("cdul_rt.cli.label", "Label a folder of images with CDUL pseudo labels."),
    "export": ("cdul_rt.cli.export", "Export CLIP graphs (or a classifier) to ONNX / TensorRT."),
    "train": ("cdul_rt.cli.train", "Train a classifier on pseudo labels with gradient alignment."),
    "eval": ("cdul_rt.cli.eval", "mAP and per-class AP of a label file against ground truth."),
    "predict": ("cdul_rt.cli.predict", "Predict labels with a trained classifier."),
    "convert": ("cdul_rt.cli.convert", "Export a label file to Label Studio, CVAT, FiftyOne or COCO."),
    "similar": ("cdul_rt.cli.similar", "Images closest to a query image or text (label --save-embeddings)."),
    "report": ("cdul_rt.cli.report", "Review a label file in one static HTML page (with --gt: its errors)."),
    "serve": ("cdul_rt.cli.serve", "Serve labels and embeddings on a Triton Inference Server (PyTriton)."),
    "bench": ("cdul_rt.cli.bench", "Benchmark runtimes and precisions on this machine."),
    "demo": ("cdul_rt.cli.demo", "The whole pipeline offline on the synthetic world."),
    "models": ("cdul_rt.cli.catalog", "List model presets."),
    "classes": ("cdul_rt.cli.catalog", "Print a vocabulary (built-in name, file or comma list)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, name if hasattr(module, name) else "command")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the table above, so `--help` imports none of them."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            import difflib

            name = args[0] if args else ""
            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise click.UsageError(f"No such command {name!r}.{hint} `cdul-rt --help` lists them.", ctx) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (CdulError, ModuleNotFoundError) as exc:
            error = exc if isinstance(exc, CdulError) else torch_missing(exc)
            if error is None:
                raise
            click.secho(f"Error: {error}", fg="red", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cdul-rt")
def main() -> None:
    """cdul-rt: label image collections without annotation (CDUL), train on the labels, ship fast engines.

    \b
    Start offline in one command:   cdul-rt demo
    Label your own folder:          cdul-rt label ./images --classes coco --out labels.jsonl
    """


if __name__ == "__main__":  # pragma: no cover
    main()
