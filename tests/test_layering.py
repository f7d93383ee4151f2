"""The package layering: cache/ is the floor, and no two engine modules import each other.

Read from the source (every import statement, those inside functions too), so a lazy import that
closes a circle counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from engine.settings import REPO_ROOT

PACKAGES = ("cache", "engine")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules that `path` imports (a `from package import name` of a submodule counts as that submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}
    modules = set(files)
    # A package's __init__ re-exporting its modules is not an arrow between those modules.
    return {
        name: {m for m in imports_of(path, modules) if not (path.name == "__init__.py" and m.startswith(name + "."))}
        for name, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cache_imports_nothing_of_the_engine():
    upward = {
        name: sorted(m for m in deps if m.split(".")[0] == "engine")
        for name, deps in import_graph().items()
        if name.split(".")[0] == "cache"
    }
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_no_two_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_check_sees_a_planted_circle():
    graph = import_graph()
    graph["engine.sweep.backend"] = graph["engine.sweep.backend"] | {"engine.sweep.ray_backend"}
    assert ["engine.sweep.backend", "engine.sweep.ray_backend"] in cycles(graph)
