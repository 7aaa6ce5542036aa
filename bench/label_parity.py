"""Label files made by one version of cdul-rt vs another, from the same folder and flags (a refactor check).

`make` writes every output format (JSONL, CSV, Parquet, npz), both CPU runtimes, every aggregation mode, the
--top-k path, a --server-free resume (half the folder, then all of it) and Ray shards into OUT; `compare` says,
file by file, whether two such folders hold the same labels: label files byte for byte, Parquet and npz by value
(exact), run metadata (`.meta.json`) with the fields that name the time or the process left out, Ray shards as one
table sorted by path.

    PYTHONPATH=. python bench/label_parity.py make /tmp/before        # on the old commit
    PYTHONPATH=. python bench/label_parity.py make /tmp/after         # on the new one
    PYTHONPATH=. python bench/label_parity.py compare /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

FORMATS = ("jsonl", "csv", "parquet", "npz")
COMMON = ["--model", "cdul-tiny", "--classes", "synth", "-q", "-j", "0", "-b", "4"]
VOLATILE = {"created", "started", "finished", "updated", "time", "host", "hostname", "pid", "elapsed_s", "wall_s",
            "cdul_rt_version", "version", "command", "argv", "cwd", "seconds", "images_per_s", "images_per_second"}


def cli(*args: str, env: dict) -> None:
    cmd = [sys.executable, "-m", "cdul_rt", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")


def make(out: Path, n: int) -> None:
    from cdul_rt.synth.scenes import write_scene_folder

    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CDUL_RT_CACHE=str(out / "cache"), OMP_NUM_THREADS="1")
    images = out / "world" / "images"
    if not images.exists():
        write_scene_folder(out / "world", n, seed=7)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # one failure line per run
    labels = out / "labels"
    for runtime in ("torch", "onnxruntime"):
        for fmt in FORMATS:
            cli("label", str(images), "-o", str(labels / f"{runtime}.{fmt}"), "--runtime", runtime,
                "--save-parts", "--save-embeddings", *COMMON, env=env)
        for mode in ("global", "avg", "max"):
            cli("label", str(images), "-o", str(labels / f"{runtime}-{mode}.jsonl"), "--runtime", runtime,
                "--mode", mode, "--save-parts", *COMMON, env=env)
        cli("label", str(images), "-o", str(labels / f"{runtime}-zeta.jsonl"), "--runtime", runtime,
            "--zeta", "0.45", "--lam", "0.5", "--top-k", "3", *COMMON, env=env)
    # resume: label half of the folder, add the other half, run again (the second run labels only the new ones)
    half = out / "half"
    if not half.exists():
        half.mkdir()
        for p in sorted(p for p in images.iterdir() if p.name.startswith("scene_"))[: n // 2]:
            (half / p.name).write_bytes(p.read_bytes())
    for fmt in FORMATS:
        cli("label", str(half), "-o", str(labels / f"resume.{fmt}"), "--runtime", "torch", "--save-parts", *COMMON,
            env=env)
        for p in sorted(p for p in images.iterdir() if p.name.startswith("scene_"))[n // 2:]:
            (half / p.name).write_bytes(p.read_bytes())
        cli("label", str(half), "-o", str(labels / f"resume.{fmt}"), "--runtime", "torch", "--save-parts", *COMMON,
            env=env)
        for p in sorted(p for p in images.iterdir() if p.name.startswith("scene_"))[n // 2:]:
            (half / p.name).unlink()
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray not installed: no Ray shards", file=sys.stderr)
    else:
        cli("label", str(images), "-o", str(labels / "ray"), "--cluster", "ray", "--actors", "1", "--runtime",
            "torch", "--save-parts", *COMMON, env=env)
    print(f"wrote {out}")


def _strip(obj, root: str = ""):
    """Drop the fields that name a time, a speed or the process; write the output folder's own path as ROOT."""
    if isinstance(obj, dict):
        return {_strip(k, root): _strip(v, root) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v, root) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"Ray node [0-9a-f]+", "Ray node ID", obj.replace(root, "ROOT") if root else obj)
    return obj


def _differences(x, y, at: str = "") -> list[str]:
    if isinstance(x, dict) and isinstance(y, dict):
        return [d for k in sorted(set(x) | set(y)) for d in
                ([f"{at}/{k} only on one side"] if (k in x) != (k in y) else _differences(x[k], y[k], f"{at}/{k}"))]
    return [] if x == y else [f"{at}: {json.dumps(x)[:80]} vs {json.dumps(y)[:80]}"]


def _root(path: Path) -> str:
    return str(path.parent.parent) if path.parent.name == "labels" else str(path.parent.parent.parent)


def _same_json(a: Path, b: Path) -> str | None:
    ja, jb = _strip(json.loads(a.read_text()), _root(a)), _strip(json.loads(b.read_text()), _root(b))
    return None if ja == jb else "; ".join(_differences(ja, jb))


def _same_jsonl(a: Path, b: Path) -> str | None:
    la = [_strip(json.loads(x), _root(a)) for x in a.read_text().splitlines() if x.strip()]
    lb = [_strip(json.loads(x), _root(b)) for x in b.read_text().splitlines() if x.strip()]
    return None if la == lb else f"{len(la)} vs {len(lb)} lines; first difference at line " \
        f"{next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))}"


def _table(path: Path):
    import pyarrow.dataset as ds

    t = ds.dataset(str(path), format="parquet").to_table()
    return t.sort_by("path") if "path" in t.column_names else t


def _same_parquet(a: Path, b: Path) -> str | None:
    ta, tb = _table(a), _table(b)
    if ta.schema != tb.schema:
        return f"schema differs:\n{ta.schema}\nvs\n{tb.schema}"
    return None if ta.equals(tb) else "values differ"


def _same_npz(a: Path, b: Path) -> str | None:
    import numpy as np

    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        if sorted(za.files) != sorted(zb.files):
            return f"arrays {sorted(za.files)} vs {sorted(zb.files)}"
        bad = [k for k in za.files if za[k].dtype != zb[k].dtype or not np.array_equal(za[k], zb[k])]
    return f"arrays differ: {bad}" if bad else None


def compare(a: Path, b: Path) -> int:
    la, lb = a / "labels", b / "labels"
    names = sorted({p.relative_to(la).as_posix() for p in la.iterdir()} | {p.relative_to(lb).as_posix()
                                                                          for p in lb.iterdir()})
    bad = 0
    for name in names:
        pa, pb = la / name, lb / name
        if not pa.exists() or not pb.exists():
            msg = f"only in {'after' if not pa.exists() else 'before'}"
        elif pa.is_dir():
            msg = _same_parquet(pa, pb)
            # the shard folder's own meta and failures files
            for extra in sorted(set(os.listdir(pa)) - {x for x in os.listdir(pa) if x.endswith(".parquet")}):
                if (pa / extra).is_file() and extra.endswith(".json"):
                    msg = msg or _same_json(pa / extra, pb / extra)
        elif name.endswith(".parquet"):
            msg = _same_parquet(pa, pb)
        elif name.endswith(".npz"):
            msg = _same_npz(pa, pb)
        elif name.endswith(".meta.json") or name.endswith(".json"):
            msg = _same_json(pa, pb)
        elif name.endswith(".jsonl"):
            msg = None if pa.read_bytes() == pb.read_bytes() else _same_jsonl(pa, pb) or "bytes differ (same JSON)"
        elif name.endswith(".lock"):
            continue
        else:
            msg = None if pa.read_bytes() == pb.read_bytes() else "bytes differ"
        print(f"{'SAME' if msg is None else 'DIFF'}  {name}" + ("" if msg is None else f"  {msg}"))
        bad += msg is not None
    print(f"{len(names) - bad} of {len(names)} outputs identical")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--images", type=int, default=12)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.out, args.images)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
