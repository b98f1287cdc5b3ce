"""The house's plan, read from the code (docs/ARCHITECTURE.md, "Floors"): imports point down only,
no cycles, engines import nothing outside themselves, api runs no SQL, only cli/ and server/
read shipyard.yaml's models, and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "shipyard"

# Top to bottom. A package may import its own floor's packages (never in a cycle) and any floor below.
FLOORS = [
    {"cli", "__main__"},
    {"server"},
    {"dashboard"},
    {"api"},
    {"inference"},
    {"config"},
    {"experiments", "monitor", "scaling", "routing"},
    {"cache", "gateway", "optimize"},
    {"engines"},
    {"store", "hooks", "aio", "embeddings", "evaluation", "demo", "units", "shipyard"},
]
FLOOR_OF = {package: depth for depth, packages in enumerate(FLOORS) for package in packages}


def modules(root: Path = SOURCE) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        if "migrations" in path.parts:
            continue  # Alembic's scripts, run by the store
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(names: dict[str, Path]) -> list[tuple[str, str, str, int]]:
    """(importer, imported module, imported name or "", line) for every import of shipyard code,
    at any depth (a function-level import is still an import)."""
    found = []
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(name, alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("shipyard")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("shipyard"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if target in names:  # `from shipyard.api import websocket`: the module itself
                        found.append((name, target, "", node.lineno))
                    else:
                        found.append((name, node.module, alias.name, node.lineno))
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(edges: list[tuple[str, str, str, int]]) -> list[str]:
    """Every broken rule, as a readable line."""
    found = []
    for importer, imported, name, line in edges:
        here, there = package_of(importer), package_of(imported)
        where = f"{importer}:{line} imports {imported}{'.' + name if name else ''}"
        if here not in FLOOR_OF or there not in FLOOR_OF:
            found.append(f"{where}: a package with no floor (add it to FLOORS and docs/ARCHITECTURE.md)")
            continue
        if FLOOR_OF[there] < FLOOR_OF[here]:
            found.append(f"{where}: upward ({there} is above {here})")
        if here == "engines" and there != "engines":
            found.append(f"{where}: engines import nothing outside themselves")
        if there == "config" and here not in ("cli", "server", "config"):
            found.append(f"{where}: only cli/ and server/ read shipyard.yaml's models")
        if name.startswith("_") and not name.startswith("__") and importer != imported:
            found.append(f"{where}: another module's private name")
    return found


def cycles(edges: list[tuple[str, str, str, int]]) -> list[list[str]]:
    """Strongly connected sets of two or more modules (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _, _ in edges:
        if imported != importer and not importer.startswith(imported + "."):
            graph.setdefault(importer, set()).add(imported)
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def edges():
    return imports(modules())


def test_imports_point_down_and_keep_the_rules(edges):
    assert violations(edges) == []


def test_no_import_cycles_between_modules_nor_packages(edges):
    assert cycles(edges) == []
    packages = [(package_of(a), package_of(b), "", 0) for a, b, _, _ in edges if package_of(a) != package_of(b)]
    assert cycles([(f"shipyard.{a}", f"shipyard.{b}", n, line) for a, b, n, line in packages]) == []


def test_api_runs_no_sql():
    for path in (SOURCE / "api").rglob("*.py"):
        if path.name == "errors.py":  # maps the store's exceptions to statuses; runs nothing
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (module or "").startswith("sqlalchemy"), f"{path}: imports {module}"


def test_the_checker_catches_an_upward_import_a_cycle_and_a_private_name():
    """The rules bite: an engine importing the gateway, api importing the CLI, a cycle, a private name."""
    broken = [("shipyard.engines.base", "shipyard.gateway.auth", "Principal", 1),
              ("shipyard.api.guard", "shipyard.cli.main", "", 2),
              ("shipyard.monitor.metrics", "shipyard.experiments.spec", "", 3),
              ("shipyard.experiments.spec", "shipyard.monitor.metrics", "_TYPES", 4)]
    found = violations(broken)
    assert any("engines import nothing" in v for v in found) and any("upward (cli" in v for v in found)
    assert any("private name" in v for v in found)
    assert cycles(broken) == [["shipyard.experiments.spec", "shipyard.monitor.metrics"]]
