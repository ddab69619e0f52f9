"""The house rules of issue 16, checked on the source: imports among python/kilnet modules run
one way (no cycles, function-level imports included), the compiled extensions are imported only
by backend.py, and the saving code reads models and layers only through public names."""
import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "python", "kilnet")


def _modules():
    mods = {}
    for dp, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dp, f)
                name = "kilnet." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                name = name[:-len(".__init__")] if name.endswith(".__init__") else name
                mods[name] = path
    return mods


def _targets(mod, path, node, mods):
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".")
            if not path.endswith("__init__.py"):
                base = base[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
    out = set()
    for t in names:
        while t and t not in mods and t.startswith("kilnet"):
            t = t.rpartition(".")[0]          # kilnet._cpu (an extension) -> kilnet
        if t and t != "kilnet" and t in mods and t != mod:
            out.add(t)
            parent = t.rpartition(".")[0]      # importing a.b.c runs a.b's __init__ first
            while parent not in ("", "kilnet"):
                if not mod.startswith(parent + "."):
                    out.add(parent)
                parent = parent.rpartition(".")[0]
    return out


def _graph():
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(mod, path, node, mods)
        graph[mod] = edges
    return graph


def _cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_run_one_way():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles among kilnet modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_extensions_are_imported_by_backend_only():
    bad = []
    for mod, path in _modules().items():
        if mod == "kilnet.backend":
            continue
        src = open(path, encoding="utf-8").read()
        if re.search(r"^\s*(from kilnet import _cu?[dp][au]\w*|import kilnet\._cu?[dp][au])", src, re.M):
            bad.append(mod)
    assert bad == []


@pytest.mark.parametrize("name", ["saving", "io"])
def test_saving_uses_public_names_of_models(name):
    """model.<_private> / layer.<_private> / opt.<_private> never appear in the saving code."""
    paths = [p for m, p in _modules().items() if m == f"kilnet.{name}" or m.startswith(f"kilnet.{name}.")]
    bad = []
    for path in paths:
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if re.search(r"\b(model|layer|opt|obj|optimizer)\._[a-z]\w*", line):
                bad.append(f"{os.path.basename(path)}:{i}: {line.strip()}")
    assert bad == []
