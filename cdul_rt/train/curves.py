"""Loss / mAP curves as a PNG (matplotlib is in the ``train`` extra and imported only here)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """Plot per-epoch loss (left) and any mAP series (right). Returns False (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed, so no curves.png; pip install 'cdul-rt[train]'", stacklevel=2)
        return False
    rows = [r for r in history if r.get("epoch", 0) >= 1]
    map_keys = sorted({k for r in history for k in r if k.startswith("map_")})
    fig, axes = plt.subplots(1, 2 if map_keys else 1, figsize=(10 if map_keys else 5, 4), squeeze=False)
    loss_ax = axes[0][0]
    loss_ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="KL loss", title="training loss")
    if map_keys:
        map_ax = axes[0][1]
        for key in map_keys:
            points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            if points:
                map_ax.plot(*zip(*points), marker="o", label=key.removeprefix("map_"))
        map_ax.set(xlabel="epoch", ylabel="mAP", title="mAP (epoch 0 = initial pseudo labels)")
        map_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
