"""The package's modules import one way: no module imports (even lazily, inside a function) one that imports
it back. A cycle hides an order dependency (which module must finish loading first) and makes a module
impossible to read or move alone; issue 18 removed worker ↔ executors/local, tasks/scoring ↔ tasks/masked
and the optim/ cycles, and this keeps them out."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zobench"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its body (top level, functions, TYPE_CHECKING).

    `from zobench.a import b` is an edge to zobench.a.b when that is a module, else to zobench.a; importing a
    submodule is not counted as importing its parent package's __init__ (every submodule would then form a
    cycle with a package that lists its submodules)."""
    names = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == root.name:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    graph[name].add(child if child in names else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.split(".")[0] == root.name)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (first module repeated at the end), or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        return list(e.args[1])
    return None


def test_the_package_has_no_import_cycle():
    found = cycle(import_graph(PACKAGE))
    assert found is None, "import cycle: " + " → ".join(found or [])


@pytest.mark.parametrize("pair", [("zobench.worker", "zobench.executors.local"),
                                  ("zobench.tasks.scoring", "zobench.tasks.masked")])
def test_the_cycles_issue_18_removed_stay_removed(pair):
    graph = import_graph(PACKAGE)
    a, b = pair
    assert not (b in graph[a] and a in graph[b]), f"{a} and {b} import each other"


def test_the_graph_sees_a_cycle_made_of_lazy_imports(tmp_path):
    """The checker itself: a cycle through a function-level import is found, a one-way pair is not."""
    pkg = tmp_path / "zobench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from zobench.sub import a, b\n")
    (pkg / "sub" / "a.py").write_text("from zobench.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("thing = 1\n")
    assert cycle(import_graph(pkg)) is None
    (pkg / "sub" / "b.py").write_text("def later():\n    from zobench.sub import a\n    return a\n")
    assert set(cycle(import_graph(pkg))) == {"zobench.sub.a", "zobench.sub.b"}
