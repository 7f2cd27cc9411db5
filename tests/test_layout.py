"""The layout docs/architecture.md promises: small modules and functions, and imports that only go down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_cli"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The cifar_cli modules a module imports (at its top level, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifar_cli"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in NAMES else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cifar_cli")}
    return found


NAMES = {_name(p) for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_are_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 420, "a module over ~400 lines does more than one job"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.end_lineno - node.body[0].lineno + 1  # the signature (a command's options) excluded
            assert body <= 50, f"{node.name} is {body} lines"


def test_imports_only_go_down() -> None:
    top = {_name(p): _imports(p, top_level_only=True) for p in MODULES}
    anywhere = {_name(p): _imports(p, top_level_only=False) for p in MODULES}
    for name, imported in anywhere.items():
        if not name.startswith(("cifar_cli.cli", "cifar_cli.__main__")):
            assert not any(i.startswith("cifar_cli.cli") for i in imported), f"{name} imports the command line"
        if name.startswith("cifar_cli.models"):  # the network never knows files, runs or the command line
            assert not imported & {"cifar_cli.files", "cifar_cli.run_folder", "cifar_cli.checkpoint"}, name
            assert not any(i.startswith("cifar_cli.training") for i in imported), name
        if name in ("cifar_cli.data", "cifar_cli.augment", "cifar_cli.device_augment", "cifar_cli.pictures"):
            assert not any(i.startswith(("cifar_cli.models", "cifar_cli.training")) for i in imported), name

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        for imported in top.get(name, ()):
            if imported in top and imported != name:
                visit(imported, (*path, name))

    for name in top:
        visit(name, ())


def test_every_import_inside_a_function_names_something_that_exists() -> None:
    """Commands import the heavy modules when they run; a name moved elsewhere would fail only then."""
    import importlib

    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifar_cli"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or f"{node.module}.{alias.name}" in NAMES, \
                        f"{path.name}: from {node.module} import {alias.name}"
