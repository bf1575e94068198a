#!/usr/bin/env python3
"""The module graph of the `jobkit` crate (shared/src): which top-level module uses which, from the
`crate::<module>` paths in its code (comments and doc comments excluded). Prints the modules leaves
first with what each depends on, and exits 1 if the graph has a cycle (printing it).

    python3 tools/modgraph.py [SRC_DIR]
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "src")


def module_of(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def code(text):
    # Drop line comments (doc comments included) and block comments; keep string contents out too.
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph():
    modules = {module_of(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs if f.endswith(".rs")}
    modules.discard("lib")
    edges = {m: set() for m in modules}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            src = module_of(path)
            if src == "lib":
                continue
            text = code(open(path, encoding="utf-8").read())
            uses = set(re.findall(r"\bcrate::(\w+)", text))
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                uses |= {p.strip().split("::")[0] for p in group.split(",") if p.strip()}
            edges[src] |= {u for u in uses if u in modules and u != src}
    return edges


def main():
    edges = graph()
    order, state = [], {}

    def visit(m, stack):
        if state.get(m) == "done":
            return
        if state.get(m) == "active":
            cycle = stack[stack.index(m):] + [m]
            print("cycle: " + " -> ".join(cycle))
            sys.exit(1)
        state[m] = "active"
        for n in sorted(edges[m]):
            visit(n, stack + [m])
        state[m] = "done"
        order.append(m)

    for m in sorted(edges):
        visit(m, [])
    for m in order:
        deps = ", ".join(sorted(edges[m])) or "(leaf)"
        print(f"{m:10} -> {deps}")
    print(f"{len(order)} modules, {sum(len(v) for v in edges.values())} edges, no cycle")


if __name__ == "__main__":
    main()
