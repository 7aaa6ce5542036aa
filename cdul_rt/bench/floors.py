"""``--floor``: minimum figures a CI run must reach, e.g. ``speedup=3``, ``torch/bf16/e2e:images_per_s=5`` or
``default_share=0.75`` (the default row's img/s over the fastest end-to-end row within the quality margin)."""

from __future__ import annotations

from dataclasses import dataclass

from cdul_rt.errors import CdulError, did_you_mean

METRICS = ("speedup", "images_per_s", "roofline", "default_share")


@dataclass(frozen=True)
class Floor:
    """``metric >= minimum`` on one row (``row`` = ``runtime/precision/scope``), or on the best end-to-end row."""

    metric: str
    minimum: float
    row: str | None = None

    def describe(self) -> str:
        return f"{self.row or 'best end-to-end row'}: {self.metric} >= {self.minimum:g}"


def parse_floor(spec: str) -> Floor:
    row, _, rest = spec.rpartition(":")
    metric, eq, value = rest.partition("=")
    metric = metric.strip()
    if not eq:
        raise CdulError(f"--floor {spec!r}: expected [ROW:]METRIC=VALUE, e.g. speedup=3 or torch/bf16/e2e:images_per_s=5")
    if metric not in METRICS:
        raise did_you_mean(metric, METRICS, "--floor metric", f"Metrics: {', '.join(METRICS)}.")
    try:
        minimum = float(value)
    except ValueError:
        raise CdulError(f"--floor {spec!r}: {value!r} is not a number") from None
    return Floor(metric, minimum, row.strip() or None)


def row_key(row: dict) -> str:
    return f"{row['runtime']}/{row['precision']}/{row['scope']}"


def _target(floor: Floor, rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r.get("status") == "ok"]
    if floor.row is None:
        e2e = [r for r in ok if r["scope"] == "e2e" and r.get("parity_ok", True) and r["runtime"] != "naive"]
        return max(e2e, key=lambda r: r["images_per_s"], default=None)
    return next((r for r in ok if row_key(r) == floor.row), None)


def default_share(rows: list[dict]) -> float | None:
    """img/s of the default row (``label`` without speed flags) over the fastest measured end-to-end row whose
    runtime/precision is within the quality margin; None when either is missing."""
    e2e = [r for r in rows if r["scope"] == "e2e" and r.get("status") == "ok" and r.get("images_per_s")]
    default = next((r for r in e2e if r["runtime"] == "default"), None)
    best = max((r["images_per_s"] for r in e2e if r.get("within_margin") and r["runtime"] not in ("default", "naive")),
               default=None)
    return default["images_per_s"] / best if default and best else None


def check_floors(floors: list[Floor], rows: list[dict]) -> list[str]:
    """Failure messages, one per floor not met (empty: all met). A floor whose row is missing fails too."""
    failures = []
    for floor in floors:
        if floor.metric == "default_share":
            share = default_share(rows)
            if share is None or share < floor.minimum:
                failures.append(f"{floor.describe()}: measured {share if share is None else round(share, 4)}")
            continue
        row = _target(floor, rows)
        if row is None:
            failures.append(f"{floor.describe()}: no such measured row")
            continue
        value = row.get(floor.metric)
        if value is None or value < floor.minimum:
            failures.append(f"{floor.describe()}: measured {value if value is None else round(value, 4)} "
                            f"on {row_key(row)}")
    return failures
