"""The shape of the house: no import cycles, and dvc.yaml's deps and params cannot drift from what each stage's
code imports and reads (otherwise editing a module would not re-run the stages that depend on it)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("pipeline", "stages")


def _modules() -> dict[str, Path]:
    """module name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def _imports(module: str) -> set[str]:
    """Project modules `module` imports anywhere in its file (function-level imports included: they run when the
    function does, so a stage that calls it depends on them)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        for name in names:
            if name in MODULES:
                found.add(name)
                found.update(_parents(name))
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH[m])
    return seen


def test_no_import_cycles_between_modules():
    """Tarjan's strongly connected components over module-level and function-level imports; a package importing
    its own submodules lazily (a registry of backends) is not a cycle of the house, so package -> own submodule
    edges are left out."""
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_library_never_imports_the_stage_scripts():
    offenders = {m: sorted(d for d in deps if d.startswith("stages")) for m, deps in GRAPH.items()
                 if m.startswith("pipeline")}
    assert {m: d for m, d in offenders.items() if d} == {}


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(_dvc_stages()))
def test_stage_deps_cover_every_module_it_imports(name):
    stage = _dvc_stages()[name]
    deps = [str(d) for d in stage.get("deps", [])]

    def covered(path: Path) -> bool:
        rel = path.relative_to(REPO).as_posix()
        return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)

    needed = sorted(MODULES[m].relative_to(REPO).as_posix() for m in _closure(f"stages.{name}")
                    if not covered(MODULES[m]))
    assert needed == [], f"dvc.yaml stage `{name}` does not list these files it imports in its deps: {needed}"
    assert stage["cmd"] == f"python -m stages.{name}"


@pytest.mark.parametrize("name", sorted(_dvc_stages()))
def test_stage_params_match_the_sections_it_reads(name):
    from pipeline.stage import load_stage

    declared = load_stage(name).sections
    listed = {str(p).split(".")[0] for p in _dvc_stages()[name].get("params", [])}
    assert listed == set(declared), (f"dvc.yaml stage `{name}` lists params {sorted(listed)}, its code declares "
                                     f"{sorted(declared)} (stages/{name}.py)")
    assert name in declared  # one name end to end: stage = script = params section


def test_the_check_itself_sees_function_level_imports():
    # pipeline.stage imports pipeline.errors inside user_errors(): the deps check must see it
    assert "pipeline.errors" in GRAPH["pipeline.stage"]
    assert "pipeline.analysis" in GRAPH["pipeline.analysis.toy"]
