#!/usr/bin/env python3
"""The crate's module import graph, and its cycles.

Reads every `src/**/*.rs`, maps each file to its module path (`src/backend/cpu/conv.rs` is
`backend::cpu::conv`), and collects the modules it names through `crate::...` paths (in `use`
items and in code) and `super::...` paths. Prints the strongly connected components of more than
one module: each is an import circle. `--dot` writes the graph for Graphviz; `--depth N` merges
modules below depth N into their ancestor (depth 1: top-level modules only).

  python3 tools/import_graph.py            # circles between files' modules
  python3 tools/import_graph.py --depth 1  # circles between top-level modules
  python3 tools/import_graph.py --dot graph.dot

Exit status 1 when a circle exists, so CI can hold the line once none is left.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z_0-9]*)+)")


def module_of(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--dot")
    args = ap.parse_args()
    files = {module_of(p): p for p in ROOT.rglob("*.rs") if p.name != "main.rs"}
    modules = set(files)

    def resolve(mod, base, rest):
        target = list(base) + rest
        # The longest prefix that is a module (the rest names items in it).
        while target and tuple(target) not in modules:
            target.pop()
        return tuple(target) if target and tuple(target) != mod else None

    edges = {m: set() for m in modules}
    for mod, path in files.items():
        text = strip_comments(path.read_text())
        # `#[cfg(test)] mod tests` imports do not count: tests may reach anywhere.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        is_dir = path.name == "mod.rs"
        for kind, rest in PATH.findall(text):
            rest = rest.strip(":").split("::")
            if kind == "crate":
                base = ()
            else:
                # `super` from a file module is its parent; from mod.rs, the parent's parent.
                base = mod[:-1] if not is_dir else mod[:-1]
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
            t = resolve(mod, base, rest)
            if t is not None and t[: len(mod)] != mod:
                edges[mod].add(t)
    if args.depth:
        merged = {}
        for m, ts in edges.items():
            a = m[: args.depth]
            merged.setdefault(a, set()).update(t[: args.depth] for t in ts if t[: args.depth] != a)
        edges = merged
    # A module and its own submodules are one unit: an edge parent -> child is not a circle.
    for m in edges:
        edges[m] = {t for t in edges[m] if t[: len(m)] != m and m[: len(t)] != t}
    if args.dot:
        with open(args.dot, "w") as f:
            f.write("digraph crate {\n")
            for m, ts in sorted(edges.items()):
                for t in sorted(ts):
                    f.write(f'  "{"::".join(m)}" -> "{"::".join(t)}";\n')
            f.write("}\n")
    # Tarjan's strongly connected components.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    circles = [sorted("::".join(m) for m in c) for c in comps if len(c) > 1]
    for c in sorted(circles):
        print("circle:", " <-> ".join(c))
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, {len(circles)} circles")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
