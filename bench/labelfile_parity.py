"""The label-file library of two versions, called directly, compared file by file (a check for issue 11 item 4).

`bench/label_parity.py` goes through the CLI; this reaches what the CLI does not: every format with and without
--save-parts and --top-k, file names that are not UTF-8 or hold quotes, commas and newlines, classes with `:` `,`
`"`, non-finite rows refused, resume into a finished Parquet / npz (its rows carried into the journal),
`write_label_file`, JSONL / CSV tails torn at five offsets then `done_paths`, `--save-embeddings` storage per format,
Ray shards with embeddings. `make` writes the files and a pickle of every read-back (tables, rows, done sets,
refusals, error messages); `compare` says per file whether the two are byte-identical (npz: member bytes, since the
zip records member timestamps).

    PYTHONPATH=<old tree> python bench/labelfile_parity.py make /tmp/lf_before
    PYTHONPATH=.          python bench/labelfile_parity.py make /tmp/lf_after
    python bench/labelfile_parity.py compare /tmp/lf_before /tmp/lf_after
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np


CLASSES = ["cat", "dog", "a:b", "x,y", 'q"t']
NAMES = ["a.png", "sub/b.jpg", os.fsdecode(b"bad\xff\xfe.png"), "new\nline.png", 'quo"te,comma.png', "é.png", "z.png",
         "y.png"]
FORMATS = ("jsonl", "csv", "parquet", "npz")


def _table(t) -> tuple:
    return t.paths, t.classes, t.scores.tolist(), {k: v.tolist() for k, v in t.parts.items()}


def _writers(out: Path, rng, reads: dict) -> None:
    """Every format x --save-parts x --top-k, a NaN row refused, then a resumed second run adding rows."""
    from cdul_rt.labelfile import LabelWriter, iter_rows, read_label_file

    for fmt in FORMATS:
        for parts in (False, True):
            for top_k in (None, 2):
                p = out / f"w_{parts}_{top_k}.{fmt}"
                s, g, a = (rng.random((8, 5)).astype(np.float32) for _ in range(3))
                s[3, 1] = np.nan
                for run, rows in enumerate((slice(0, 5), slice(5, 8))):  # the second run resumes (carry for npz/parquet)
                    w = LabelWriter(p, CLASSES, 0.4, top_k, save_parts=parts)
                    reads[f"existing{run} {p.name}"] = sorted(w.existing())
                    w.open()
                    reads[f"refused{run} {p.name}"] = w.write_batch(NAMES[rows], s[rows], g[rows], a[rows])
                    w.close()
                reads[f"table {p.name}"] = _table(read_label_file(p))
                reads[f"rows {p.name}"] = list(iter_rows(p))


def _embeddings_and_whole_files(out: Path, rng, reads: dict) -> None:
    from cdul_rt.embeddings import EmbeddingWriter, read_embeddings
    from cdul_rt.labelfile import LabelWriter, read_label_file, write_label_file

    for fmt in FORMATS:
        p = out / f"emb.{fmt}"
        w, e = LabelWriter(p, CLASSES), EmbeddingWriter(p)
        w.open()
        e.write_batch(NAMES[:6], rng.standard_normal((6, 4)).astype(np.float32))
        w.write_batch(NAMES[:6], rng.random((6, 5)).astype(np.float32))
        w.close()
        e.finalize()
        paths, emb = read_embeddings(p)
        reads[f"emb {p.name}"] = (paths, np.asarray(emb).tolist())
        p = out / f"wlf.{fmt}"
        parts = {k: rng.random((4, 5)).astype(np.float32) for k in ("global", "aggregate")}
        write_label_file(p, NAMES[:4], CLASSES, rng.random((4, 5)).astype(np.float32), meta={"x": 1}, threshold=0.3,
                         parts=parts)
        reads[f"wlf {p.name}"] = _table(read_label_file(p))


def _torn_tails(out: Path, reads: dict) -> None:
    from cdul_rt.labelfile import done_paths, repair_tail

    for fmt in ("jsonl", "csv"):
        data = (out / f"w_True_None.{fmt}").read_bytes()
        for cut in (len(data) - 3, len(data) - 1, data.find(b"new\n") + 4, 10, len(data) // 2):
            t = out / f"torn_{cut}.{fmt}"
            t.write_bytes(data[:cut])
            repair_tail(t, fmt)
            try:
                reads[f"done {t.name}"] = sorted(done_paths(t, fmt))
            except Exception as exc:  # noqa: BLE001 - the error itself is compared
                reads[f"done {t.name}"] = f"{type(exc).__name__}: {str(exc).replace(str(out), 'OUT')}"


def _shards(out: Path, rng, reads: dict) -> None:
    from cdul_rt.distributed.shards import ShardWriter, read_shards
    from cdul_rt.embeddings import read_embeddings

    sd = out / "shards"
    (sd / "_failures").mkdir(parents=True, exist_ok=True)
    sw = ShardWriter(sd, CLASSES, 0.4, None, save_parts=True, shard_rows=3)
    sw.run_id = "fixed"  # shard names hold a random run id otherwise
    utf8 = [n for n in NAMES if n.encode("utf-8", "replace").decode() == n] + ["w.png"]  # shards: UTF-8 names only
    s, emb = rng.random((8, 5)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    for rows in (slice(0, 5), slice(5, 8)):
        sw.add(utf8[rows], s[rows], s[rows] * 0.5, s[rows] * 0.25, embeddings=emb[rows])
    sw.add_failures(["f.png"], ["broken"])
    sw.flush()
    reads["shards"] = _table(read_shards(sd))
    paths, saved = read_embeddings(sd)
    reads["shard emb"] = (paths, np.asarray(saved).tolist())


def make(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng, reads = np.random.default_rng(0), {}
    _writers(out, rng, reads)
    _embeddings_and_whole_files(out, rng, reads)
    _torn_tails(out, reads)
    _shards(out, rng, reads)
    with open(out / "reads.pkl", "wb") as f:
        pickle.dump(reads, f)
    print(f"wrote {out}: {len(reads)} read-backs")


def _same(a: Path, b: Path) -> bool:
    if a.name == "reads.pkl":
        return pickle.loads(a.read_bytes()) == pickle.loads(b.read_bytes())
    if a.suffix == ".npz":  # the zip records each member's time: compare the members' bytes
        with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
            return za.namelist() == zb.namelist() and all(za.read(n) == zb.read(n) for n in za.namelist())
    return a.read_bytes() == b.read_bytes()


def compare(a: Path, b: Path) -> int:
    names = sorted({p.relative_to(a) for p in a.rglob("*") if p.is_file()}
                   | {p.relative_to(b) for p in b.rglob("*") if p.is_file()})
    bad = 0
    for name in names:
        if not (a / name).is_file() or not (b / name).is_file():
            msg = f"DIFF  {name}  only in {'after' if not (a / name).is_file() else 'before'}"
        else:
            msg = f"{'SAME' if _same(a / name, b / name) else 'DIFF'}  {name}"
        bad += msg.startswith("DIFF")
        print(msg)
    print(f"{len(names) - bad} of {len(names)} identical")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
