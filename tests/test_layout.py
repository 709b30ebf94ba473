"""The package's seams (issue 14): no import cycle anywhere in edgeser/ (imports inside functions included), no
stage module importing another, and each format's name spelled in at most two modules."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import edgeser
from edgeser.formats import REGISTRY

ROOT = Path(edgeser.__file__).resolve().parent


def _module(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the edgeser modules it imports, anywhere in its body."""
    mods = {_module(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for n in names:
                while n and n not in mods:
                    n = n.rsplit(".", 1)[0] if "." in n else ""
                if n and n != mod and n != "edgeser":
                    graph[mod].add(n)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "edgeser"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from edgeser.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from edgeser import a\n")
    assert cycles(import_graph(pkg)) == [["edgeser.a", "edgeser.sub.b"]]


def test_no_stage_imports_another_stage():
    graph = import_graph()
    stages = {m for m in graph if m.startswith("edgeser.stages.")} - {"edgeser.stages.common"}
    bad = {m: sorted(graph[m] & stages) for m in stages if graph[m] & stages}
    assert bad == {}


def test_each_format_name_in_at_most_two_modules():
    spelled = {}
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        for name in REGISTRY:
            if re.search(rf"""["']{re.escape(name)}["']""", text):
                spelled.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert {n: sorted(m) for n, m in spelled.items() if len(m) > 2} == {}


def test_readme_tables_match_the_code():
    """The README's stage, format and report tables are what edgeser/layout_docs.py renders from the code."""
    from edgeser.layout_docs import TABLES

    readme = (ROOT.parent / "README.md").read_text()
    for name, render in TABLES.items():
        m = re.search(rf"<!-- table:{name}[^>]*-->\n(.*?)\n<!-- /table:{name} -->", readme, re.S)
        assert m, f"README.md has no table:{name} block"
        assert m.group(1) == render(), f"README.md's {name} table is stale: paste edgeser.layout_docs.{render.__name__}()"
