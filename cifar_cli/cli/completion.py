"""What TAB offers: preset names and FILE.py:NAME for --model, class names for --class, a checkpoint's
convolutions for --layer. One TAB starts a fresh process, so nothing here imports torch (seconds): the
names are read from the source and from the checkpoint's JSON header, never by importing or running code
(a user's network file is parsed, not imported)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import typer

PACKAGE = Path(__file__).resolve().parents[1]


def _source(module: str) -> ast.Module | None:
    try:
        return ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


def preset_names() -> list[str]:
    """The presets, as models/presets.py registers them (`@register_model("name", ...)`)."""
    tree = _source("models/presets.py")
    return [d.args[0].value for node in ast.walk(tree or ast.Module([], [])) if isinstance(node, ast.FunctionDef)
            for d in node.decorator_list if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_model"
            and d.args and isinstance(d.args[0], ast.Constant)]


def class_names() -> list[str]:
    """CIFAR-10's classes, as data.CLASSES spells them."""
    for node in (_source("data.py") or ast.Module([], [])).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "CLASSES":
            return list(ast.literal_eval(node.value))
    return []


def _top_level_names(path: Path) -> list[str]:
    """The classes and functions a network file defines at its top level, read without running it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and not n.name.startswith("_")]


def complete_model(incomplete: str) -> list[str]:
    if ".py:" in incomplete:
        file, _, name = incomplete.partition(":")
        return [f"{file}:{n}" for n in _top_level_names(Path(file).expanduser()) if n.startswith(name)]
    head, slash, _ = incomplete.rpartition("/")
    folder, shown = (Path(head or "/").expanduser(), head + slash) if slash else (Path("."), "")
    try:
        files = sorted(f"{shown}{p.name}:" for p in folder.iterdir() if p.suffix == ".py" and p.is_file())
    except OSError:
        files = []
    return [n for n in [*preset_names(), *files] if n.startswith(incomplete)]


def complete_class(incomplete: str) -> list[str]:
    return [n for n in class_names() if n.casefold().startswith(incomplete.casefold())]


def _checkpoint_convolutions(path: Path) -> list[str]:
    """The convolutions (4-D weights) a checkpoint holds, by module name, from its safetensors header."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 10_000_000 else {}
    except (OSError, ValueError):
        return []
    return [k.removeprefix("model.").removesuffix(".weight") for k, v in header.items() if k.startswith("model.")
            and k.endswith(".weight") and isinstance(v, dict) and len(v.get("shape", [])) == 4]


def complete_layer(ctx: typer.Context, incomplete: str) -> list[str]:
    given: Any = ctx.params.get("checkpoint")
    path = Path(given).expanduser() if given else next(iter(sorted((PACKAGE / "weights").glob("*.safetensors"))), None)
    return [n for n in (_checkpoint_convolutions(path) if path else []) if n.startswith(incomplete)]
