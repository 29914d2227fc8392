#!/usr/bin/env python3
"""Lists import cycles between oomlab's modules (ARCHITECTURE.md: no module imports one that
imports it back). Two levels: the top-level modules of src/ (edges from `crate::name`), and the
rooms of each folder module (edges from `super::name` and `crate::folder::name` between
siblings; a room naming its own parent's items is not a cycle between rooms). Code under
`#[cfg(test)]` and files named tests.rs are left out. Exits 1 when there is a cycle.
    python3 scripts/module-cycles.py
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def code(path: str) -> str:
    text = open(path).read()
    cut = text.find("#[cfg(test)]\nmod tests {")
    text = text if cut < 0 else text[:cut]
    return re.sub(r"//.*", "", text)


def files(path: str) -> list[str]:
    if os.path.isfile(path + ".rs"):
        return [path + ".rs"]
    return [
        os.path.join(d, f)
        for d, _, fs in os.walk(path)
        for f in fs
        if f.endswith(".rs") and f != "tests.rs"
    ]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def names(folder: str) -> list[str]:
    return sorted(
        n[:-3] if n.endswith(".rs") else n
        for n in os.listdir(folder)
        if n not in ("lib.rs", "main.rs", "mod.rs", "tests.rs")
        and (n.endswith(".rs") or os.path.isdir(os.path.join(folder, n)))
    )


def main() -> int:
    bad = []
    top = names(SRC)
    edges = {m: set() for m in top}
    for m in top:
        for f in files(os.path.join(SRC, m)):
            found = re.findall(r"crate::([a-z_0-9]+)", code(f))
            edges[m] |= {t for t in found if t in edges and t != m}
    bad += [("src", c) for c in cycles(edges)]
    for m in top:
        folder = os.path.join(SRC, m)
        if not os.path.isdir(folder):
            continue
        rooms = names(folder)
        inner = {r: set() for r in rooms}
        for r in rooms:
            for f in files(os.path.join(folder, r)):
                text = code(f)
                found = re.findall(r"super::([a-z_0-9]+)", text)
                found += re.findall(rf"crate::{m}::([a-z_0-9]+)", text)
                inner[r] |= {t for t in found if t in inner and t != r}
        bad += [(m, c) for c in cycles(inner)]
    for where, c in bad:
        print(f"cycle in {where}: {' <-> '.join(c)}")
    print(f"{len(bad)} cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
