"""Which network a command runs, as plain data: a preset and its settings, or the user's own code.

A user network is named `FILE.py:NAME` or `package.module:NAME`, where NAME is a class or function that
returns an nn.Module taking N x 3 x 32 x 32 images to N x 10 logits. Its code is imported only when the
user names it on the command line; a checkpoint records the name, the class and a hash of the source file,
and is never a reason to import anything: a spec read from a file is a record, and `create_model` refuses to
build a user network from one (only `resolve_model`, given what the user typed, makes a spec it will build).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar_cli.errors import CifarError
from cifar_cli.models.config import NUM_CLASSES
from cifar_cli.models.registry import PRESETS, config_dict
from cifar_cli.settings import DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    name: str = DEFAULT_MODEL  # a preset, or the user's FILE.py:NAME / package.module:NAME
    config: dict[str, Any] = field(default_factory=dict)  # a preset's settings, in JSON form
    class_name: str = ""  # user networks: the class of the module their callable returned
    source_sha256: str = ""  # user networks: the source file as it was when the checkpoint was written
    # User networks: True only when the user typed the name (resolve_model). A spec read from a file is a
    # record of what ran, never a licence to import it. Not part of equality: the same network either way.
    typed: bool = field(default=False, compare=False, repr=False)

    @property
    def is_preset(self) -> bool:
        return self.name in PRESETS

    def to_dict(self) -> dict[str, Any]:
        if self.is_preset:
            return {"name": self.name, "config": self.config}
        return {"name": self.name, "class": self.class_name, "source_sha256": self.source_sha256}

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """Read what `to_dict` wrote; ValueError for anything else. Imports nothing."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("the model record has no name")
        name = data["name"]
        if name in PRESETS:
            return cls(name, config_dict(PRESETS[name].config(data.get("config", {}))))
        if ":" not in name:
            raise ValueError(f"unknown network {name!r} (presets: {', '.join(PRESETS)})")
        class_name, sha = data.get("class", ""), data.get("source_sha256", "")
        if not (isinstance(class_name, str) and isinstance(sha, str)):
            raise ValueError("the user network's class and source hash must be strings")
        return cls(name, {}, class_name, sha)

    def describe(self) -> str:
        return self.name if self.is_preset else f"{self.name} ({self.class_name or 'user network'})"


def preset_spec(name: str = DEFAULT_MODEL) -> ModelSpec:
    return ModelSpec(name, config_dict(PRESETS[name].default_config))


def resolve_model(name: str | None) -> ModelSpec:
    """--model as the user typed it: a preset name, or FILE.py:NAME / package.module:NAME (imported now)."""
    name = name or DEFAULT_MODEL
    if name in PRESETS:
        return preset_spec(name)
    if ":" not in name:
        raise CifarError(f"--model {name}: not a preset ({', '.join(PRESETS)}) nor FILE.py:NAME or "
                         "package.module:NAME")
    factory, source = _import_factory(name)
    model = _build_user_network(name, factory)
    return ModelSpec(name, {}, type(model).__name__, _sha256(source) if source else "", typed=True)


def create_model(spec: ModelSpec) -> nn.Module:
    """A fresh network for the spec (random weights; seed torch first for repeatable ones).

    A user network is built only from a spec the user typed (resolve_model): one that came from a file
    names code, and naming code in a file is no reason to run it.
    """
    if spec.is_preset:
        return PRESETS[spec.name].create(spec.config)
    if not spec.typed:
        raise CifarError(f"{spec.describe()} is your own network, named in a file; cifar-cli never imports code "
                         f"that a file names, so pass it yourself: --model {spec.name}")
    factory, _ = _import_factory(spec.name)
    return _build_user_network(spec.name, factory)


def source_changed(recorded: ModelSpec, given: ModelSpec) -> bool:
    """True when a user network's source file differs from the one a checkpoint was trained with."""
    return bool(recorded.source_sha256 and given.source_sha256 and recorded.source_sha256 != given.source_sha256)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _import_factory(spec: str) -> tuple[Callable[[], Any], Path | None]:
    """Import the module a user named and return (its NAME, its source file)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise CifarError(f"--model {spec}: expected FILE.py:NAME or package.module:NAME")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    try:
        module = _import_file(Path(target).expanduser()) if is_file else importlib.import_module(target)
    except CifarError:
        raise
    except BaseException as e:  # a user's module may raise anything while importing, SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        raise CifarError(f"--model {spec}: importing {target} raised {_first_line(e)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CifarError(f"--model {spec}: {target} has no class or function named {attr}")
    source = getattr(module, "__file__", None)
    return factory, Path(source) if source else None


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise CifarError(f"--model: network file not found: {path}")
    name = f"cifar_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CifarError(f"--model: cannot import {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    sys.modules[name] = module
    return module


def _build_user_network(spec: str, factory: Callable[[], Any]) -> nn.Module:
    """Call the user's factory and check its contract on a real forward pass, in words the user can act on."""
    try:
        model = factory()
    except Exception as e:
        raise CifarError(f"--model {spec}: calling it raised {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise CifarError(f"--model {spec}: it returned a {type(model).__name__}, not a torch nn.Module")
    if not any(True for _ in model.parameters()):
        raise CifarError(f"--model {spec}: the network has no parameters to train")
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 3, 32, 32))
    except Exception as e:
        raise CifarError(f"--model {spec}: its forward pass on a 2 x 3 x 32 x 32 batch raised {_first_line(e)}") \
            from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, NUM_CLASSES):
        raise CifarError(f"--model {spec}: a 2 x 3 x 32 x 32 batch gave {shape}; expected (2, {NUM_CLASSES}) "
                         "logits, one per CIFAR-10 class")
    return model
