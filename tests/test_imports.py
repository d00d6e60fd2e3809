"""The package's modules import one another without cycles, and each imports in a fresh interpreter.

Every import that can run counts, those inside functions (lazy imports) included: a lazy import only
hides a cycle from import time, the two modules still need each other at run time, and the layering
(nn/ below graph/ below surgery, ...) is what this guards. Imports under `if TYPE_CHECKING:` never run
(annotations only) and do not count. Importing a submodule also runs its parent packages' `__init__`,
so those count too, except the importer's own ancestors (every module's import starts with them).
"""

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pyprune_fast

ROOT = "pyprune_fast"


def modules() -> dict[str, Path]:
    """Every module of the package (packages as their __init__), by dotted name."""
    out = {ROOT: Path(pyprune_fast.__file__)}
    for info in pkgutil.walk_packages(pyprune_fast.__path__, ROOT + "."):
        out[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return {name: path for name, path in out.items() if path.suffix == ".py"}


def _runnable(node: ast.AST):
    """`node` and every node under it, but for the bodies of `if TYPE_CHECKING:` (their else kept)."""
    yield node
    for child in ast.iter_child_nodes(node):
        test = child.test if isinstance(child, ast.If) else None
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":  # TYPE_CHECKING, typing.TYPE_CHECKING
            for other in child.orelse:
                yield from _runnable(other)
        else:
            yield from _runnable(child)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module `name` (source at `path`) imports, anywhere in code that can run."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in _runnable(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    out = set()
    for target in targets:
        parts = target.split(".")
        for n in range(1, len(parts) + 1):  # the module and the packages above it
            dotted = ".".join(parts[:n])
            if dotted in known and not (name == dotted or name.startswith(dotted + ".")):
                out.add(dotted)
    return out


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` ({module: modules it imports}) as [a, b, ..., a]; [] when none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_cycles_are_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_are_resolved_as_python_does(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom .. import ops\nfrom ..graph.trace import Node\nfrom . import base\n"
                   "def f():\n    from ..nn import widths\n    import pyprune_fast.plan\n"
                   "if TYPE_CHECKING:\n    from ..flops import Profile\nelse:\n    from .. import allocation\n")
    known = {ROOT, f"{ROOT}.ops", f"{ROOT}.graph", f"{ROOT}.graph.trace", f"{ROOT}.nn", f"{ROOT}.nn.widths",
             f"{ROOT}.plan", f"{ROOT}.methods", f"{ROOT}.methods.m", f"{ROOT}.methods.base", f"{ROOT}.flops",
             f"{ROOT}.allocation"}
    got = imported(f"{ROOT}.methods.m", src, known)
    assert got == {f"{ROOT}.ops", f"{ROOT}.graph", f"{ROOT}.graph.trace", f"{ROOT}.nn", f"{ROOT}.nn.widths",
                   f"{ROOT}.plan", f"{ROOT}.methods.base", f"{ROOT}.allocation"}  # not its own packages, nor flops


def test_the_package_has_no_import_cycle():
    found = modules()
    assert {f"{ROOT}.nn.widths", f"{ROOT}.nn.swin", f"{ROOT}.graph", f"{ROOT}.surgery"} <= set(found)
    graph = {name: imported(name, path, set(found)) for name, path in found.items()}
    assert f"{ROOT}.nn.swin" in graph[f"{ROOT}.nn.widths"]  # the lazy import counts
    found_cycle = cycle(graph)
    assert not found_cycle, "import cycle: " + " -> ".join(found_cycle)


def test_every_module_imports_in_a_fresh_interpreter():
    """One fresh interpreter imports every module by its own name, in the walk's order: those the package's
    __init__ does not import (cli, testing, nn.swin, ...) import too, from a clean start, and no import
    relies on an earlier one of the test run. __main__ runs the CLI, so it is only parsed above."""
    names = [name for name in modules() if not name.endswith(".__main__")]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
