"""``cdul-rt similar``: the images closest to a query image or text, over saved embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("similar")
@click.argument("labels", type=click.Path(exists=True, path_type=Path))
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Query image.")
@click.option("--text", "text", default=None, help='Query text, e.g. "a red car" (used as written, no template).')
@click.option("--top", "-n", default=10, show_default=True, help="How many images to list.")
@click.option("--model", "-m", default=None, help="CLIP to embed the query with. Default: the one in LABELS' meta.")
@click.option("--pretrained", default=None, help="As for `label` (default: from the meta).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="As for `label` (default: from the meta).")
@click.option("--runtime", default=None,
              help="Runtime that embeds the query (as for `label`). Default: torch, or onnxruntime on the artifact "
                   "folder when LABELS was made with --engine-dir.")
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON.")
def command(labels: Path, image: Path | None, text: str | None, top: int, model: str | None,
            pretrained: str | None, weights: str | None, runtime: str | None, as_json: bool) -> None:
    """List the images of LABELS (labeled with --save-embeddings) closest to --image or --text, by cosine
    similarity of CLIP embeddings. Brute force: fine up to about a million images."""
    from cdul_rt.embeddings import read_embeddings
    from cdul_rt.errors import CdulError
    from cdul_rt.labelfile import display_name, read_meta
    from cdul_rt.similar import embed_query, open_query_labeler, top_matches

    if (image is None) == (text is None):
        raise CdulError("give exactly one query: --image FILE or --text \"...\"")
    if top < 1:
        raise CdulError(f"--top must be >= 1, got {top}")
    paths, embeddings = read_embeddings(labels)
    with open_query_labeler(read_meta(labels), model, pretrained, weights, runtime) as labeler:
        query = embed_query(labeler, image, text)
    idx, sims = top_matches(embeddings, query, top)
    matches = [{"path": paths[i], "similarity": round(float(s), 6)} for i, s in zip(idx, sims)]
    if as_json:
        click.echo(json.dumps({"query": str(image) if image else text, "matches": matches}, indent=2))
        return
    click.echo(f"{len(matches)} of {len(paths)} images closest to {image or repr(text)}:")
    for rank, m in enumerate(matches, 1):
        click.echo(f"{rank:>4}  {m['similarity']:.4f}  {display_name(m['path'])}")  # non-UTF-8 names as \xNN
