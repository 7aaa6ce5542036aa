"""The report's figures (matplotlib, Agg backend), each returned as a PNG ``data:`` URI to embed in the page."""

from __future__ import annotations

import base64
import io

import numpy as np

MAX_BARS = 60  # classes shown in a bar chart; more would be unreadable (the page says which were left out)
BINS = np.linspace(0.0, 1.0, 21)


def _figure(height: float, width: float = 7.5):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def _uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bar_height(n: int) -> float:
    return 1.0 + 0.2 * min(n, MAX_BARS)


def class_counts_plot(classes: list[str], counts: np.ndarray, n_images: int) -> str:
    """Horizontal bars: images labeled with each class (the MAX_BARS most frequent)."""
    order = np.argsort(-counts, kind="stable")[:MAX_BARS][::-1]
    fig, ax = _figure(_bar_height(len(classes)))
    ax.barh([classes[j] for j in order], counts[order], color="#4c72b0")
    ax.set_xlabel(f"images labeled (of {n_images})")
    ax.set_title("Labels per class" + (f" (top {MAX_BARS} of {len(classes)})" if len(classes) > MAX_BARS else ""))
    ax.tick_params(axis="y", labelsize=8)
    return _uri(fig)


def score_histograms_plot(classes: list[str], scores: np.ndarray, counts: np.ndarray, threshold: float) -> str:
    """Per-class score histograms as one heat map (rows: classes, columns: score bins, colour: log image count)."""
    order = np.argsort(-counts, kind="stable")[:MAX_BARS]
    hist = np.stack([np.histogram(scores[:, j], BINS)[0] for j in order]) if len(order) else np.zeros((0, 20))
    fig, ax = _figure(_bar_height(len(order)))
    im = ax.imshow(np.log10(1 + hist), aspect="auto", cmap="viridis", extent=(0, 1, len(order), 0),
                   interpolation="nearest")
    ax.set_yticks(np.arange(len(order)) + 0.5, [classes[j] for j in order], fontsize=8)
    ax.axvline(threshold, color="#e45756", lw=1.2, ls="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("score (S_final)")
    ax.set_title("Score histogram per class (20 bins)")
    ax.legend(loc="lower right", fontsize=8)
    fig.colorbar(im, ax=ax, label="log10(1 + images)", fraction=0.04)
    return _uri(fig)


def ap_plot(per_class: dict[str, float]) -> str:
    """Per-class AP as bars, worst at the bottom (the MAX_BARS worst when there are more)."""
    items = sorted(per_class.items(), key=lambda kv: kv[1])[:MAX_BARS][::-1]
    fig, ax = _figure(_bar_height(len(items)))
    ax.barh([k for k, _ in items], [100 * v for _, v in items], color="#55a868")
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    ax.set_title("Per-class AP against the ground truth")
    ax.tick_params(axis="y", labelsize=8)
    return _uri(fig)


def pr_curves_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> str:
    """Precision-recall curves (step-wise, as AP sums them) of the given classes."""
    fig, ax = _figure(4.0, 6.0)
    for name, (precision, recall, ap) in curves.items():
        ax.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="post", label=f"{name} (AP {100 * ap:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall of the worst classes")
    ax.legend(fontsize=8, loc="lower left")
    return _uri(fig)
