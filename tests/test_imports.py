"""The package's modules import one another without a circle (imports inside functions count too: a lazy
import only hides a circle until the day it runs at import time)."""

from __future__ import annotations

import ast
from pathlib import Path

import lexsearch

ROOT = Path(lexsearch.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import mod` names a module; `from mod import name` names the module itself.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                # The deepest module of ours that the import names (a package's submodule or the package).
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("lexsearch"):
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_among_modules():
    # A package importing its own submodules (``lexsearch/x/__init__.py`` -> ``lexsearch.x.y``) and the
    # submodule importing a name from the package is Python's normal layout, not a circle between modules.
    graph = _graph()
    for name, targets in graph.items():
        targets.difference_update({t for t in targets if name.startswith(t + ".")})
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)
