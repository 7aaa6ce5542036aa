"""A stand-in for ImageNet pre-training in the offline synthetic world: a torchvision ResNet trained as a
single-label classifier on single-object views (one object per image, like ImageNet photos; never a multi-object
scene, never a scene label). Its state dict loads with ``cdul-rt train --weights FILE`` exactly as torchvision's
ImageNet files do (``fc`` is replaced).

    python -m cdul_rt.train.synth_backbone --out synth-resnet18.pth
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

SEED_OFFSET = 7919  # keeps these views apart from the tiny CLIP's training and evaluation draws


def render_views(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n tile-like single-object views (uint8 [n, size, size, 3]) and their class indices, balanced by class."""
    from cdul_rt.synth.classes import SYNTH_CLASSES
    from cdul_rt.synth.scenes import STREAM_SINGLE, item_rng, render_view

    classes = np.arange(n) % len(SYNTH_CLASSES)
    images = np.stack([np.asarray(render_view(int(c), item_rng(seed + SEED_OFFSET, i, STREAM_SINGLE), size))
                       for i, c in enumerate(classes)])
    return images, classes


def _tensor(images: np.ndarray):
    import torch

    from cdul_rt.train.config import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--images", "n_images", default=4800, show_default=True)
@click.option("--size", default=64, show_default=True)
@click.option("--epochs", default=10, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True)
def main(out: Path, arch: str, n_images: int, size: int, epochs: int, lr: float, seed: int, threads: int) -> None:
    import torch

    from cdul_rt.train.model import build_classifier

    torch.set_num_threads(threads)
    started = time.perf_counter()
    x_train, y_train = render_views(n_images, size, seed)
    x_test, y_test = render_views(max(24, n_images // 8), size, seed + 1)
    torch.manual_seed(seed)
    model = build_classifier(arch, int(y_train.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = _tensor(x_train), torch.from_numpy(y_train).long()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            batch = xt[idx]
            batch = torch.where(torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5, batch.flip(-1), batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(batch).float(), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(1) for b in _tensor(x_test).split(128)]).numpy()
        accuracy = float((pred == y_test).mean())
        click.echo(f"epoch {epoch + 1}: loss {float(loss.detach()):.3f}, held-out accuracy {accuracy:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    record = {"arch": arch, "images": n_images, "size": size, "epochs": epochs, "lr": lr, "seed": seed,
              "held_out_accuracy": float((pred == y_test).mean()), "seconds": round(time.perf_counter() - started)}
    out.with_name(out.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
