#!/usr/bin/env python3
"""Import circles between the top-level modules of each workspace crate.

    scripts/module-cycles.py [CRATE_SRC_DIR ...]    (default: every crates/*/src and src)

A module here is a crate's top-level room (`job/`, `store/`, `workflow.rs`). A file refers to
another room through `crate::ROOM`, `crate::{ROOM, ...}` or `super::` paths that climb out of
its own room. Cargo already refuses cycles between crates; this catches them inside one
(docs/architecture.md: data flows one way). Comments are skipped. Prints each circle and exits
1 if there is one.
"""
import re
import sys
from pathlib import Path

IDENT = r"[a-z_][a-z0-9_]*"


def rooms_of(src: Path) -> set[str]:
    rooms = set()
    for p in src.iterdir():
        if p.is_dir():
            rooms.add(p.name)
        elif p.suffix == ".rs" and p.stem not in ("lib", "main"):
            rooms.add(p.stem)
    return rooms


def module_path(src: Path, f: Path) -> list[str]:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def refs(src: Path, f: Path, text: str) -> set[str]:
    path = module_path(src, f)
    out = set()
    for line in text.splitlines():
        code = line.split("//", 1)[0]
        for m in re.finditer(r"\bcrate::(\{[^}]*\}|" + IDENT + ")", code):
            group = m.group(1)
            names = re.findall(r"(?:^|[{,]\s*)(" + IDENT + ")", group) if group.startswith("{") else [group]
            out.update(names)
        for m in re.finditer(r"\b((?:super::)+)(" + IDENT + ")", code):
            up = m.group(1).count("super::")
            # A file's own module is `path`; inline `mod tests` blocks climb one more.
            base = path[: max(len(path) - up, 0)]
            target = base + [m.group(2)]
            out.add(target[0])
    return out


def cycles(src: Path) -> list[list[str]]:
    rooms = rooms_of(src)
    edges = {r: set() for r in rooms}
    for f in src.rglob("*.rs"):
        path = module_path(src, f)
        if not path:
            continue
        own = path[0]
        for r in refs(src, f, f.read_text(errors="replace")):
            if r in rooms and r != own:
                edges[own].add(r)
    # Tarjan's strongly connected components.
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(rooms):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    dirs = [Path(a) for a in sys.argv[1:]] or sorted(root.glob("crates/*/src")) + [root / "src"]
    found = False
    for src in dirs:
        for comp in cycles(src):
            found = True
            print(f"{src.relative_to(root) if src.is_absolute() else src}: {' <-> '.join(comp)} import each other")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
