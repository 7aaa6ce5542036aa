"""Bench rows, the derived ratios, and their table / JSON forms (pure, torch-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cdul_rt.bench.roofline import roofline_fraction, speedup
from cdul_rt.bench.stats import Throughput

SCOPES = {"e2e": "end-to-end", "encode": "encoder"}


@dataclass
class Row:
    """One runtime/precision in one scope; ``status`` is ``ok`` or why it was not measured."""

    runtime: str
    precision: str
    scope: str  # "e2e" (label_folder: decode .. write) or "encode" (runner.infer on ready crops)
    device: str = "cpu"
    status: str = "ok"
    parity: float | None = None  # max |S_final - S_final(fp32 torch)| over the measured images
    parity_ok: bool | None = None
    images_per_s: float | None = None
    ms_per_image: float | None = None
    spread: float | None = None  # (max - min) / median of the repeated runs
    runs: int = 0
    speedup: float | None = None  # over the naive open_clip loop
    roofline: float | None = None  # fraction of the best GEMM measured in the run at this row's precision
    roofline_by: str = ""  # the library whose GEMM set that ceiling
    within_margin: bool | None = None  # runtime/precision shown to keep label quality (engines/auto.py)
    note: str = ""
    samples: list[float] = field(default_factory=list)

    def measured(self, t: Throughput) -> "Row":
        self.images_per_s, self.ms_per_image, self.spread = t.median, t.ms_per_image, t.spread
        self.samples, self.runs = [round(s, 4) for s in t.samples], len(t.samples)
        return self


def derive(rows: list[Row], peaks: dict[str, tuple[float, str]], flops_per_image: float, tol: float) -> None:
    """Fill speed-up over the naive row, roofline fraction (against ``peaks[precision] = (FLOP/s, library)``)
    and the parity verdict in place."""
    naive = next((r for r in rows if r.runtime == "naive" and r.images_per_s), None)
    for r in rows:
        if r.images_per_s is None:
            continue
        if naive is not None:
            r.speedup = speedup(r.images_per_s, naive.images_per_s)
        peak = peaks.get(r.precision)
        if peak:
            r.roofline = roofline_fraction(r.images_per_s, peak[0], flops_per_image)
            r.roofline_by = peak[1]
        if r.parity is not None:
            r.parity_ok = r.parity <= tol


def default_ratio(rows: list[Row]) -> tuple[Row, Row] | None:
    """(default row, fastest end-to-end row within the quality margin), both measured; None when either is not."""
    e2e = [r for r in rows if r.scope == "e2e" and r.status == "ok" and r.images_per_s]
    default = next((r for r in e2e if r.runtime == "default"), None)
    best = max((r for r in e2e if r.within_margin and r.runtime not in ("default", "naive")),
               key=lambda r: r.images_per_s, default=None)
    return (default, best) if default and best else None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


HEADER = ("runtime", "precision", "scope", "status", "parity", "margin", "ms/img", "img/s", "spread", "x naive",
          "roofline")


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    out = []
    for r in rows:
        parity = "-" if r.parity is None else f"{r.parity:.1e}" + ("" if r.parity_ok is not False else " FAIL")
        margin = "-" if r.within_margin is None else "in" if r.within_margin else "out"
        out.append((r.runtime, r.precision, SCOPES.get(r.scope, r.scope), r.status, parity, margin,
                    _fmt(r.ms_per_image, ".0f"), _fmt(r.images_per_s, ".2f"),
                    "-" if r.spread is None else f"{100 * r.spread:.0f}%", _fmt(r.speedup, ".2f"),
                    "-" if r.roofline is None else f"{100 * r.roofline:.0f}% {r.roofline_by}"))
    return out


def format_table(rows: list[Row], markdown: bool = False) -> str:
    return render_table([HEADER, *table_rows(rows)], markdown)


def render_table(body: list[tuple[str, ...]], markdown: bool = False) -> str:
    """A header row plus rows of cells as aligned text, or as a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in body]
        lines.insert(1, "|" + "---|" * len(body[0]))
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body)


def rows_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
