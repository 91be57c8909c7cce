"""
The service layer's import graph: no cycle (function-level imports included), nothing imports the worker entry
point, and the library below (core, shell) never imports the service layer.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import twisted_sipnat

PACKAGE = Path(twisted_sipnat.__file__).resolve().parent


def _moduleName(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> Set[str]:
    """Every twisted_sipnat module ``path`` imports, at any depth of the file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def importGraph() -> Dict[str, Set[str]]:
    """``{module: the twisted_sipnat modules it imports}`` over the whole package."""
    files = {_moduleName(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path, name) if m in files and m != name}
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    cycles: List[List[str]] = []
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                cycles.append(stack[stack.index(child):] + [child])
            elif child not in state:
                visit(child)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_service_layer_has_no_import_cycle() -> None:
    graph = importGraph()
    service = {name for name in graph if name.startswith("twisted_sipnat.service") or name == "twisted_sipnat.tap"}
    cycles = [c for c in _cycles(graph) if set(c) & service]
    assert cycles == []


def test_nothing_imports_the_worker_entry_point() -> None:
    graph = importGraph()
    assert [name for name, imported in graph.items() if "twisted_sipnat.service.worker" in imported] == []


def test_the_library_below_never_imports_the_service_layer() -> None:
    graph = importGraph()
    above = {"twisted_sipnat.tap", "twisted_sipnat.__main__"}
    below = [name for name in graph if not name.startswith("twisted_sipnat.service") and name not in above]
    offenders = {name: sorted(m for m in graph[name] if m.startswith("twisted_sipnat.service")) for name in below}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_roles_and_reuseport_are_gone() -> None:
    assert not (PACKAGE / "roles.py").exists() and not (PACKAGE / "reuseport.py").exists()
