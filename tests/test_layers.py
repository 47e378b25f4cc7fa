"""Layers import downward only (walked with ast, lazy imports inside functions included):

    _jax / errors / _files / _gc / _registry  ->  ir  ->  frontend, passes  ->  backends
    ->  runtime  ->  cli

A module may import its own layer and any layer below it; `frontend` and `passes` are one
level (neither imports the other). No import cycle between modules either."""
from __future__ import annotations

import ast
import os

import networkx as nx

import nnxc

ROOT = os.path.dirname(nnxc.__file__)
LEVEL = {"_jax": 0, "errors": 0, "_files": 0, "_gc": 0, "_registry": 0, "_version": 0, "ir": 1,
         "frontend": 2, "passes": 2, "backends": 3, "runtime": 4, "cli": 5, "__init__": 6}


def _modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__") if rel != "__init__" else "__init__", path


def _imports(mod: str, path: str, top_level_only: bool = False):
    """(imported nnxc module, line) for every import in the file, lazy ones included unless
    ``top_level_only`` (imports that run when the module is imported)."""
    pkg = mod.split(".")[:-1] if not path.endswith("__init__.py") else mod.split(".")
    if mod == "__init__":
        pkg = []
    tree = ast.parse(open(path).read(), path)
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif node.module and node.module.startswith("nnxc"):
                target = node.module.removeprefix("nnxc").lstrip(".")
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            else:
                continue
            yield [n.strip(".") for n in names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nnxc."):
                    yield [a.name.removeprefix("nnxc.")], node.lineno


def _layer(mod: str) -> str:
    return mod.split(".")[0] if mod else "__init__"


def _target(names: list, known: set) -> str:
    """The module an import brings in: ``from .. import _jax`` imports ``_jax``, not the package."""
    return next((n for n in reversed(names) if n in known), names[0])


def test_layers_import_downward_only():
    bad = []
    known = {m for m, _ in _modules()}
    for mod, path in _modules():
        here = _layer(mod)
        for names, line in _imports(mod, path):
            target = _target(names, known)
            there = _layer(target)
            if there == here or there not in LEVEL:
                continue
            if LEVEL[there] > LEVEL[here] or (LEVEL[there] == LEVEL[here] == 2):
                bad.append(f"nnxc/{os.path.relpath(path, ROOT)}:{line}: {here} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Between modules, counting the imports that run at import time (a function-level import
    of a module that imports this one is how a registry finds its rules, not a cycle)."""
    known = {m for m, _ in _modules()}
    g = nx.DiGraph()
    for mod, path in _modules():
        for names, _ in _imports(mod, path, top_level_only=True):
            target = _target(names, known) if any(n in known for n in names) else None
            if target and target != mod and not (mod.startswith(target + ".") or target == "__init__"):
                g.add_edge(mod, target)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles[:5]}"
