#!/usr/bin/env python3
"""Prints the graph of ssegate's top-level modules (who uses whom, from
`crate::<module>` paths in src/, unit tests left out) and exits 1 if it
has a cycle. Usage: scripts/module-graph.py [src-dir]"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
path_ref = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
grouped = re.compile(r"\buse\s+crate::\{([^;]*)\};", re.S)
tests = re.compile(r"(?s)#\[cfg\(test\)\]\s*mod \w+\s*\{.*")

graph = {}
for dirpath, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, name), src)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = tests.sub("", open(os.path.join(dirpath, name), encoding="utf-8").read())
        used = set(path_ref.findall(text))
        for group in grouped.findall(text):
            used.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        graph.setdefault(top, set()).update(u for u in used if u != top)

for module in sorted(graph):
    print(f"{module:10} -> {', '.join(sorted(graph[module])) or '-'}")

cycles = []
state = {}


def visit(node, trail):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
        if state.get(nxt) == "open":
            cycles.append(trail[trail.index(nxt):] + [nxt])
        elif nxt in graph and nxt not in state:
            visit(nxt, trail + [nxt])
    state[node] = "done"


for module in sorted(graph):
    if module not in state:
        visit(module, [module])
if cycles:
    for c in cycles:
        print("cycle: " + " -> ".join(c))
    sys.exit(1)
print("no import cycle")
