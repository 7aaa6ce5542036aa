"""The import graph of cdul_rt between its parts (subpackages and top-level modules), lazy imports included.

Prints: lines of code, every edge part -> part with its count, the pairs of parts that import each other (two-way
arrows: one of the two points up), and imports of another module's private names (`from x import _y`).

    python scripts/import_graph.py            # summary
    python scripts/import_graph.py --edges    # and every edge
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "cdul_rt"


def part(module: str) -> str:
    """cdul_rt.engines.trt.runner -> engines; cdul_rt.pipeline -> pipeline."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else bits[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    bits = list(rel.parts)
    if bits[-1] == "__init__":
        bits = bits[:-1]
    return ".".join(bits)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("cdul_rt")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.startswith("cdul_rt"):
                out.append((mod, [a.name for a in node.names]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", action="store_true")
    args = ap.parse_args()
    files = sorted(PKG.rglob("*.py"))
    loc = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in files)
    edges: Counter[tuple[str, str]] = Counter()
    private = []
    for path in files:
        src = part(module_name(path))
        for mod, names in imports(path):
            dst = part(mod)
            if dst != src:
                edges[(src, dst)] += 1
            private += [f"{module_name(path)} <- {mod}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__") and mod != module_name(path)
                        and part(mod) != src]
    mutual = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    print(f"python files: {len(files)}, lines: {loc}")
    print(f"part-to-part edges: {len(edges)} ({sum(edges.values())} import statements)")
    print(f"two-way pairs (an upward arrow each): {len(mutual)}")
    for a, b in mutual:
        print(f"  {a} <-> {b}  ({edges[(a, b)]} / {edges[(b, a)]} imports)")
    print(f"private names imported across parts: {len(private)}")
    for p in private:
        print(f"  {p}")
    if args.edges:
        for (a, b), n in sorted(edges.items()):
            print(f"  {a} -> {b}: {n}")


if __name__ == "__main__":
    main()
