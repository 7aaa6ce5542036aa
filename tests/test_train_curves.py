"""curves.png: the warm-up span on the epoch axis and the figure's series."""

from __future__ import annotations

import pytest

from cdul_rt.train.curves import warmup_span

HISTORY = [{"epoch": 0, "map_pseudo": 0.5, "map_pseudo_val": 0.48}] + [
    {"epoch": e, "phase": "warmup" if e <= 3 else "align", "loss": 1.0 / e, "label_change": 0.0 if e <= 3 else 0.01,
     "map_pseudo": 0.5 + 0.01 * max(0, e - 3), "map_pseudo_val": 0.48, "map_pred_val": 0.4 + 0.03 * e}
    for e in range(1, 7)
]


def test_warmup_span_covers_the_epochs_with_fixed_labels():
    assert warmup_span(HISTORY) == (0, 3)  # epoch k trains between k-1 and k
    assert warmup_span([{**r, "phase": "fixed-labels"} if "phase" in r else r for r in HISTORY]) is None
    assert warmup_span(HISTORY[:1]) is None


def test_curves_png_draws_every_series(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cdul_rt.train.curves import plot_curves

    saved = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: saved.update(fig=fig, path=path))
    baseline = [{**r, "map_pred_val": r.get("map_pred_val", 0) - 0.02} for r in HISTORY]
    assert plot_curves(HISTORY, tmp_path / "c.png", compare=baseline)
    map_ax, move_ax, loss_ax = saved["fig"].axes
    labels = [line.get_label() for line in map_ax.lines]
    assert labels == ["pseudo labels, training images", "initial pseudo labels, held-out images",
                      "classifier, held-out images", "classifier, held-out images, no alignment"]
    assert list(move_ax.lines[0].get_ydata()) == [r["label_change"] for r in HISTORY[1:]]
    assert len(map_ax.patches) == 1 and len(loss_ax.patches) == 1  # the shaded warm-up
