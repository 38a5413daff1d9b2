"""The import rule of ARCHITECTURE.md, checked on the source: layers import only downward, and no two
modules import each other (directly or round a circle), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# layer of a module (by its import name); a module may import its own layer and those below it
LAYERS = ["core", "tasks", "flows", "cli"]


def layer(module: str) -> str:
    if module == "lmops.cli" or module == "lmops.__main__":
        return "cli"
    if module.startswith("lmops.flows"):
        return "flows"
    if module.startswith("lmops.tasks"):
        return "tasks"
    return "core"


def modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in ((REPO / "lmops", "lmops"), (REPO / "tasks", "lmops.tasks"), (REPO / "flows", "lmops.flows")):
        for path in folder.rglob("*.py"):
            if folder.name == "lmops" and path.parent.name == "metrics" and path.name != "__init__.py":
                continue  # evaluate metric scripts, loaded by file path
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = sorted(f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in graph.items() for d in deps
                    if LAYERS.index(layer(d)) > LAYERS.index(layer(m)))
    assert not upward, "\n".join(upward)


def test_no_import_circles(graph):
    # a package importing its own submodules (lmops.kinds -> lmops.kinds.base) is how packages re-export
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_prediction_is_importable_without_the_training_code(graph):
    """The monitor loads a registered model and predicts: nothing on that path may pull in training."""
    reach, todo = set(), ["lmops.tasks.predict"]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in reach:
                reach.add(dep)
                todo.append(dep)
    assert not reach & {"lmops.tasks.finetune", "lmops.tasks.pretrain", "lmops.tasks.lm", "lmops.tasks.tokenize"}, sorted(reach)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above is not vacuous: a core module importing a task is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lmops.tasks.ingest import ingest\n")
    assert imports_of(bad, {"lmops.tasks.ingest"}) == {"lmops.tasks.ingest"} and layer("lmops.config") == "core"


def test_installed_package_names_do_not_collide():
    """Nothing named `tasks` or `flows` is installed at the top of site-packages."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "lmops" or p.startswith("lmops.") for p in cfg["packages"])
    assert cfg["package-dir"]["lmops.tasks"] == "tasks" and cfg["package-dir"]["lmops.flows"] == "flows"


def test_nothing_imports_the_folders_by_their_top_level_names():
    """`tasks` and `flows` are lmops.tasks and lmops.flows: a bare `from tasks...` works only from a checkout's
    root and loads a second copy of the module (two error classes, two registries)."""
    import re

    bare = re.compile(r"^\s*(from|import) (tasks|flows)\b|[\"'](from|import) (tasks|flows)\b", re.M)
    found = [f"{p.relative_to(REPO)}" for folder in ("lmops", "tasks", "flows", "tests", "benchmarks")
             for p in (REPO / folder).rglob("*.py") if bare.search(p.read_text())]
    assert not found, found
