"""Imports flow one way (ARCHITECTURE.md, "Layers"): edges, then area services, then the shared domain, then the
foundation. Read from the source with ``ast``, function-local imports included, so nothing hides from the check.

Also: no import cycle between modules or between folders (a folder is one unit), no ``except ImportError`` around
the project's own modules and no ``import_module`` of them. The checks themselves are tested on small graphs below,
so a broken checker cannot pass quietly.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"flywheel": ROOT / "platform", "flywheel.feedback": ROOT / "feedback", "flywheel.retrain": ROOT / "retrain"}

# The layer order, written once. First match wins; every module must match one pattern.
EDGES, AREAS, DOMAIN, FOUNDATION = 1, 2, 3, 4
LAYERS: list[tuple[str, int]] = [
    ("flywheel.app", EDGES),
    ("flywheel.cli", EDGES),
    ("flywheel.scheduler", EDGES),
    ("flywheel.worker", EDGES),
    ("flywheel.api.*", EDGES),
    ("flywheel.web.*", EDGES),
    ("flywheel.*.api", EDGES),
    ("flywheel.*.cli", EDGES),
    ("flywheel.dashboard.views", EDGES),
    ("flywheel.dashboard.security", EDGES),
    ("flywheel.dashboard.sources", EDGES),
    ("flywheel.feedback.*", AREAS),
    ("flywheel.monitoring.*", AREAS),
    ("flywheel.retrain.*", AREAS),
    ("flywheel.dashboard.*", AREAS),
    ("flywheel.domain.*", DOMAIN),
    ("flywheel.core.*", FOUNDATION),
    ("flywheel.models", FOUNDATION),  # its __init__ imports every table module, registering them on the metadata
    ("flywheel.models.*", FOUNDATION),
]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_files() -> dict[str, Path]:
    """Every project module by its import name (packages by their ``__init__``)."""
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(modules: Mapping[str, Path]) -> list[Edge]:
    """Every import of a project module, anywhere in a file (top level, functions, ``TYPE_CHECKING`` blocks)."""
    edges: list[Edge] = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target.startswith("flywheel.") and target != name:
                    edges.append(Edge(name, target, node.lineno))
    return edges


def layer_of(module: str) -> int:
    for pattern, layer in LAYERS:
        if fnmatch.fnmatchcase(module, pattern):
            return layer
    raise LookupError(module)


def area_of(module: str) -> str:
    """The area of a layer-2 module: its folder under ``flywheel``."""
    return module.split(".")[1]


def folder_of(module: str, modules: Iterable[str]) -> str:
    """The folder (package) holding ``module``; a package's ``__init__`` belongs to the package itself."""
    names = set(modules)
    parent = module.rsplit(".", 1)[0]
    return module if any(m.startswith(module + ".") for m in names) else parent


def upward_imports(edges: Iterable[Edge]) -> list[str]:
    problems = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if dst < src:
            problems.append(f"{e.source}:{e.line} (layer {src}) imports {e.target} (layer {dst})")
        elif src == dst == AREAS and area_of(e.source) != area_of(e.target):
            problems.append(f"{e.source}:{e.line} imports another area's {e.target}: write a row or use layer 3")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def module_graph(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    return graph


def folder_graph(edges: Iterable[Edge], modules: Iterable[str]) -> dict[str, set[str]]:
    names = list(modules)
    graph: dict[str, set[str]] = {}
    for e in edges:
        a, b = folder_of(e.source, names), folder_of(e.target, names)
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


# --- the project ------------------------------------------------------------------------------------------------

MODULES = module_files()
EDGES_FOUND = import_edges(MODULES)


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for name in MODULES:
        if MODULES[name].name == "__init__.py" and not any(e.source == name for e in EDGES_FOUND):
            continue  # a package marker that imports nothing
        try:
            layer_of(name)
        except LookupError:
            unplaced.append(name)
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_no_module_imports_from_a_layer_above_or_another_area() -> None:
    problems = upward_imports(EDGES_FOUND)
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules() -> None:
    assert not cycles(module_graph(EDGES_FOUND))


def test_no_import_cycle_between_folders() -> None:
    assert not cycles(folder_graph(EDGES_FOUND, MODULES))


def test_no_guarded_or_dynamic_import_of_the_project() -> None:
    problems = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                handled = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
                if handled & {"ImportError", "ModuleNotFoundError"}:
                    own = [
                        n
                        for n in ast.walk(ast.Module(body=node.body, type_ignores=[]))
                        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("flywheel"))
                    ]
                    if own:
                        problems.append(f"{name}:{node.lineno} guards an import of its own project")
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("import_module", "__import__")):
                arg = node.args[0] if node.args else None
                if not isinstance(arg, ast.Constant) or str(arg.value).startswith("flywheel"):
                    problems.append(f"{name}:{node.lineno} imports a module dynamically")
    assert not problems, "\n".join(problems)


# --- the checks catch what they should --------------------------------------------------------------------------


def test_checks_catch_an_upward_import_and_a_cross_area_import() -> None:
    edges = [
        Edge("flywheel.core.db", "flywheel.domain.ingest", 1),
        Edge("flywheel.retrain.dataset", "flywheel.feedback.results", 2),
        Edge("flywheel.feedback.jobs", "flywheel.domain.holdout", 3),
    ]
    problems = upward_imports(edges)
    assert len(problems) == 2
    assert "flywheel.core.db:1" in problems[0] and "another area" in problems[1]


def test_checks_catch_module_and_folder_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    names = ["flywheel.api.x", "flywheel.retrain.y", "flywheel.retrain.z", "flywheel.api", "flywheel.retrain"]
    edges = [Edge("flywheel.api.x", "flywheel.retrain.y", 1), Edge("flywheel.retrain.z", "flywheel.api.x", 1)]
    assert not cycles(module_graph(edges))  # no cycle between the modules themselves ...
    assert cycles(folder_graph(edges, names)) == [["flywheel.api", "flywheel.retrain"]]  # ... but between folders
