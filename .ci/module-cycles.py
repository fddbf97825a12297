#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle.

Each file under `<crate>/src` is a module; every path through `crate::` or `super::` outside
`#[cfg(test)]` blocks and `pub use` re-exports is an edge to the module file it names. Circles
are looked for twice: between files, and between the crate's top-level modules (a folder counts
as one). Prints each circle found. Usage: module-cycles.py CRATE_DIR...
"""
import re
import sys
from pathlib import Path


def module_of(src: Path, path: Path) -> tuple:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def production_text(text: str) -> str:
    """The file without its `#[cfg(test)] mod ... { ... }` blocks."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def resolve(modules: set, path: tuple) -> tuple:
    """The longest prefix of `path` that is a module file (items inside it are the file's)."""
    while path and path not in modules:
        path = path[:-1]
    return path


def edges(src: Path):
    files = {module_of(src, p): p for p in src.rglob("*.rs")}
    modules = set(files)
    graph = {m: set() for m in modules}
    for module, path in files.items():
        text = production_text(path.read_text())
        # Re-exports make a parent's names point at its children; they are not dependencies.
        text = re.sub(r"(?m)^\s*pub(\([^)]*\))? use [^;]*;", "", text)
        # `use crate::{a::b, c}`: each path in the group.
        text = re.sub(
            r"\b(crate|super)::\{([^}]*)\}",
            lambda m: " ".join(f"{m.group(1)}::{p.strip()}" for p in m.group(2).split(",")),
            text,
        )
        is_dir_module = path.name in ("mod.rs", "lib.rs", "main.rs")
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            names = tuple(m.group(2).strip(":").split("::"))
            if m.group(1) == "crate":
                target = names
            else:
                base = module if is_dir_module else module[:-1]
                target = base[:-1] + names
            target = resolve(modules, target)
            if target and target != module and not module[: len(target)] == target:
                graph[module].add(target)
    return graph


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def top_level(graph):
    top = {}
    for node, targets in graph.items():
        src = node[:1]
        top.setdefault(src, set())
        for t in targets:
            if t[:1] != src:
                top[src].add(t[:1])
                top.setdefault(t[:1], set())
    return top


def main() -> int:
    bad = 0
    for crate in sys.argv[1:]:
        graph = edges(Path(crate) / "src")
        for cycle in cycles(graph) + cycles(top_level(graph)):
            bad += 1
            print(f"{crate}: import circle: " + " -> ".join("::".join(m) or "crate" for m in cycle))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
