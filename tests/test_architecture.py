"""The package's modules form layers: no import cycle among them (every import counts, the
ones inside functions and under TYPE_CHECKING too), and the config schema imports no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vldistill"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The package module `name` is, or lives in (`vldistill.data.DATASETS` -> vldistill.data)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    """The package modules `name` imports anywhere in its file (relative imports resolved)."""
    path = MODULES[name]
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            targets.update(submodules or {base})
            if len(submodules) < len(node.names):      # names from the module itself too
                targets.add(base)
    return {owner for t in targets if (owner := _owner(t)) and owner != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_relative_function_level_and_type_checking_imports():
    graph = {name: imports_of(name) for name in MODULES}
    assert "vldistill.data.registry" in graph["vldistill.data.coco"]        # from .registry import
    assert "vldistill.config" in graph["vldistill.data.coco"]               # under TYPE_CHECKING
    assert "vldistill.pipeline" in graph["vldistill.cli"]                   # inside a function
    assert "vldistill.data" in graph["vldistill.evaluation.evaluate"]                  # from .data import X
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_the_package():
    graph = {name: imports_of(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_schema_is_a_leaf():
    assert imports_of("vldistill.config") <= {"vldistill.errors"}
    assert imports_of("vldistill.errors") == set()


def test_reading_a_config_imports_no_torch():
    code = ("import sys, vldistill.config, vldistill.config_merge, vldistill.config_help, "
            "vldistill.fidelity\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
