"""The package's modules form layers: each imports only its own layer and the ones below
(`LAYERS`), there is no import cycle among them (every import counts, the ones inside
functions and under TYPE_CHECKING too), and the config schema imports no torch."""
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

# The layers, lowest first. A module may import modules of its own layer and of the layers
# below it, never of a layer above; an entry names a module, or a sub-package and so every
# module in it. Each sub-package's docstring (its __init__.py) says the same in words.
LAYERS: list[tuple[str, set[str]]] = [
    # the schema and what every layer uses to read it: merging, the two fidelity modes, the
    # registries and their options; `vldistill` itself is the package's version
    ("configuration", {"vldistill", "vldistill.config", "vldistill.errors", "vldistill.fidelity",
                       "vldistill.config_merge", "vldistill.registry", "vldistill.options"}),
    ("runtime", {"vldistill.runtime"}),
    ("data and models", {"vldistill.data", "vldistill.models"}),
    ("algorithms", {"vldistill.algorithms"}),
    ("buffer", {"vldistill.buffer"}),
    ("evaluation", {"vldistill.evaluation"}),
    # above evaluation: its curves use evaluation's probe, its sets may start from coresets
    ("distill", {"vldistill.distill"}),
    ("reporting", {"vldistill.reporting"}),
    # the loaders that check names against every registry, the pre-flight, the run directory,
    # the stages wired together, the sweep and the commands
    ("top", {"vldistill.configio", "vldistill.config_help", "vldistill.preflight", "vldistill.rundir",
             "vldistill.pipeline", "vldistill.sweep", "vldistill.cli", "vldistill.__main__"}),
    # the DESIGN contracts' import paths, re-exports for users: nothing in the package uses them
    ("public paths", {"vldistill.losses", "vldistill.similarity", "vldistill.retrieval"}),
]


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


def layer_of(module: str, layers: list[tuple[str, set[str]]] = LAYERS) -> int | None:
    """The index of the layer that names `module` or a package it lives in (the root package
    only for itself, so a module left out of the table is caught, not taken as the root's)."""
    parts = module.split(".")
    for n in range(len(parts), 0 if len(parts) == 1 else 1, -1):
        for index, (_, members) in enumerate(layers):
            if ".".join(parts[:n]) in members:
                return index
    return None


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, set[str]]] = LAYERS) -> list[str]:
    """Every import of a module in a higher layer than the importer's, as one line each."""
    found = []
    for module in sorted(graph):
        for target in sorted(graph[module]):
            here, there = layer_of(module, layers), layer_of(target, layers)
            if here is not None and there is not None and there > here:
                found.append(f"{module} ({layers[here][0]}) imports {target} ({layers[there][0]})")
    return found


def test_the_graph_sees_relative_function_level_and_type_checking_imports():
    graph = {name: imports_of(name) for name in MODULES}
    assert "vldistill.data.registry" in graph["vldistill.data.coco"]        # from .registry import
    assert "vldistill.config" in graph["vldistill.data.coco"]               # under TYPE_CHECKING
    assert "vldistill.pipeline" in graph["vldistill.cli"]                   # inside a function
    assert "vldistill.data" in graph["vldistill.evaluation.evaluate"]       # from ..data import X
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_the_package():
    graph = {name: imports_of(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layer_check_catches_an_upward_import():
    layers = [("low", {"p", "p.base"}), ("middle", {"p.algorithms"}), ("high", {"p.cli"})]
    assert layer_of("p.algorithms.matching", layers) == 1          # a sub-package's module
    assert layer_of("p", layers) == 0 and layer_of("p.unplaced", layers) is None
    graph = {"p.base": {"p.algorithms.matching"}, "p.algorithms.matching": {"p.base", "p.algorithms.losses"},
             "p.algorithms.losses": set(), "p.cli": {"p.algorithms.matching", "p"}}
    assert upward_imports(graph, layers) == ["p.base (low) imports p.algorithms.matching (middle)"]


def test_every_module_has_a_layer():
    unplaced = [name for name in MODULES if layer_of(name) is None]
    assert not unplaced, f"place these modules in LAYERS (tests/test_architecture.py): {unplaced}"


def test_no_module_imports_a_higher_layer():
    graph = {name: imports_of(name) for name in MODULES}
    found = upward_imports(graph)
    assert not found, "imports against the layer order (LAYERS):\n" + "\n".join(found)


def test_every_sub_package_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "may import" in " ".join(doc.split()), \
            f"{init.relative_to(ROOT)}: its docstring should say what the package owns and may import"
        assert "\n\n" not in doc, f"{init.relative_to(ROOT)}: its docstring should be one paragraph"


def test_the_design_contract_paths_still_import():
    from vldistill.algorithms import losses, retrieval, similarity
    from vldistill.losses import soft_contrastive_loss
    from vldistill.retrieval import recall_at_k
    from vldistill.similarity import build_similarity
    assert soft_contrastive_loss is losses.soft_contrastive_loss
    assert build_similarity is similarity.build_similarity
    assert recall_at_k is retrieval.recall_at_k


def test_config_schema_is_a_leaf():
    assert imports_of("vldistill.config") <= {"vldistill.errors"}
    assert imports_of("vldistill.errors") == set()


def test_reading_a_config_imports_no_torch():
    code = ("import sys, vldistill.config, vldistill.config_merge, vldistill.config_help, "
            "vldistill.fidelity\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
