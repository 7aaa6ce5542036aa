"""Training curves as a PNG (matplotlib is in the ``train`` extra and imported only here).

Three panels over epochs (epoch 0 = the initial pseudo labels, before any training): mAP of the pseudo labels and of
the classifier (training and held-out images), how far the pseudo labels moved, and the loss. The warm-up epochs
(labels fixed) are shaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

# series drawn in the mAP panel: key -> (legend, line style)
MAP_SERIES = {
    "map_pseudo": ("pseudo labels, training images", "-"),
    "map_pseudo_val": ("initial pseudo labels, held-out images", ":"),
    "map_pred_train": ("classifier, training images", "--"),
    "map_pred_val": ("classifier, held-out images", "-"),
}


def warmup_span(history: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(start, end) of the warm-up on the epoch axis: epoch k trains between k-1 and k; None without warm-up."""
    warm = [r["epoch"] for r in history if r.get("phase") == "warmup"]
    return (min(warm) - 1, max(warm)) if warm else None


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "",
                compare: list[dict[str, Any]] | None = None) -> bool:
    """Write ``path``; ``compare``: the history of a run without alignment, whose held-out classifier mAP is drawn
    beside. Returns False (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed, so no curves.png; pip install 'cdul-rt[train]'", stacklevel=2)
        return False
    rows = [r for r in history if r.get("epoch", 0) >= 1]
    fig, (map_ax, move_ax, loss_ax) = plt.subplots(1, 3, figsize=(15, 5.0))
    for key, (label, style) in MAP_SERIES.items():
        points = [(r["epoch"], 100 * r[key]) for r in history if r.get(key) is not None]
        if points:
            map_ax.plot(*zip(*points), style, marker="o", markersize=4, label=label, zorder=2)
    points = [(r["epoch"], 100 * r["map_pred_val"]) for r in compare or [] if r.get("map_pred_val") is not None]
    if points:
        map_ax.plot(*zip(*points), "-.", marker="s", markersize=3, color="0.45", linewidth=1.2, zorder=1,
                    label="classifier, held-out images, no alignment")
    map_ax.set(xlabel="epoch", ylabel="mAP (%)", title="mAP (epoch 0: initial pseudo labels)")
    if map_ax.lines:
        # below the panel: inside it, the legend hid the curves wherever it went
        map_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    move_ax.plot([r["epoch"] for r in rows], [r.get("label_change", 0.0) for r in rows], marker="o", color="C4")
    move_ax.set(xlabel="epoch", ylabel="mean |change| per label", title="pseudo-label change per epoch")
    loss_ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker="o", color="C5")
    loss_ax.set(xlabel="epoch", ylabel="KL loss", title="training loss")
    span = warmup_span(history)
    for ax in (map_ax, move_ax, loss_ax):
        ax.grid(alpha=0.3)
        if span:
            ax.axvspan(*span, color="0.85", zorder=0, label="_warm-up")
    if span:
        map_ax.text(sum(span) / 2, 0.98, "warm-up\n(labels fixed)", transform=map_ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="0.35")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
