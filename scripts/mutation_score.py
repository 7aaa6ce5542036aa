"""Per-module mutation score from mutmut's results (issue 19 item 4); run by scripts/mutation.sh.

Reads ``mutants/**/*.py.meta`` (mutmut 3's per-file verdicts) and ``scripts/mutation_equivalent.tsv`` (mutants read
and judged equivalent: no input can tell them from the original; one line each, ``name<TAB>reason``), and prints per
module: mutants, killed, equivalent (survivors, or mutants no test ran, listed there), meaningful survivors, timeout,
no tests, not checked, and
``score = killed / (mutants - equivalent)``. Timeouts and unchecked mutants are neither kills nor survivors: rerun
them (``mutmut run <names>``) before trusting a score. ``--survivors`` also lists the meaningful survivors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut 3.8's exit codes (mutmut/stats.py), grouped the way the score needs them.
KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {24, -24, 36, 152, 255}
NOT_CHECKED = {None}


def load_equivalent(path: Path) -> dict[str, str]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, reason = line.partition("\t")
                out[name.strip()] = reason.strip()
    return out


def module_of(mutant: str) -> str:
    return mutant.split(".x_")[0].split(".xǁ")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--equivalent", type=Path, default=Path(__file__).with_name("mutation_equivalent.tsv"))
    ap.add_argument("--survivors", action="store_true", help="list the meaningful survivors too")
    ap.add_argument("--no-equivalent", action="store_true", help="count every survivor as meaningful")
    ap.add_argument("--names", choices=["timeout", "not checked", "no tests", "meaningful", "equivalent"],
                    help="only print the names of the mutants in that state (one a line), e.g. to rerun them")
    args = ap.parse_args(argv)
    equivalent = {} if args.no_equivalent else load_equivalent(args.equivalent)
    metas = sorted(args.mutants.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.mutants}/: run `mutmut run` first", file=sys.stderr)
        return 2
    rows: dict[str, Counter] = {}
    meaningful: list[str] = []
    names: dict[str, list[str]] = {"timeout": [], "not checked": [], "no tests": [], "meaningful": meaningful,
                                   "equivalent": []}
    seen_equivalent = set()
    for meta in metas:
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            c = rows.setdefault(module_of(name), Counter())
            c["mutants"] += 1
            if code in KILLED:
                c["killed"] += 1
            elif name in equivalent and code in SURVIVED | NO_TESTS:  # equivalent whether a test ran it or not
                c["equivalent"] += 1
                seen_equivalent.add(name)
                names["equivalent"].append(name)
            elif code in SURVIVED:
                c["meaningful"] += 1
                meaningful.append(name)
            elif code in NO_TESTS:
                c["no tests"] += 1
                names["no tests"].append(name)
            elif code in TIMEOUT:
                c["timeout"] += 1
                names["timeout"].append(name)
            elif code in NOT_CHECKED:
                c["not checked"] += 1
                names["not checked"].append(name)
            else:
                c["other"] += 1
    if args.names:
        print("\n".join(names[args.names]))
        return 0
    cols = ["mutants", "killed", "equivalent", "meaningful", "timeout", "no tests", "not checked", "other"]
    head = f"{'module':28s}" + "".join(f"{c:>12s}" for c in cols) + f"{'score':>9s}"
    print(head)
    total = Counter()
    for mod in sorted(rows):
        c = rows[mod]
        total.update(c)
        print(_line(mod, c, cols))
    print(_line("all", total, cols))
    stale = sorted(set(equivalent) - seen_equivalent)
    if stale:
        print(f"\n{len(stale)} entries of {args.equivalent.name} are not surviving mutants now (killed or renamed):")
        print("\n".join(f"  {s}" for s in stale))
    if args.survivors and meaningful:
        print("\nmeaningful survivors (show one with `mutmut show NAME`):")
        print("\n".join(f"  {m}" for m in meaningful))
    return 0


def _line(name: str, c: Counter, cols: list[str]) -> str:
    denom = c["mutants"] - c["equivalent"]
    score = f"{100.0 * c['killed'] / denom:8.1f}%" if denom else f"{'-':>9s}"
    return f"{name:28s}" + "".join(f"{c[k]:12d}" for k in cols) + score


if __name__ == "__main__":
    sys.exit(main())
