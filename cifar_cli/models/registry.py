"""The model registry: every built-in network is one decorated factory, found here by name.

A factory takes one argument, `config`, whose default (a frozen dataclass) gives the preset's settings;
`create` rebuilds a preset from its name and the plain JSON form of those settings, so a checkpoint can
name its network without naming any code.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cifar_cli.models.config import config_from_dict


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    factory: Callable[[Any], nn.Module]
    default_config: Any  # a frozen dataclass instance

    def config(self, data: dict[str, Any] | None = None) -> Any:
        """The preset's settings from their JSON form (the defaults for None); ValueError if invalid."""
        return self.default_config if data is None else config_from_dict(self.default_config, data)

    def create(self, data: dict[str, Any] | None = None) -> nn.Module:
        return self.factory(self.config(data))


PRESETS: dict[str, Preset] = {}


def register_model(name: str, description: str) -> Callable:
    """Decorator: `@register_model("name", "one line")` on `def factory(config: Config = Config())`."""

    def add(factory: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        default = inspect.signature(factory).parameters["config"].default
        assert dataclasses.is_dataclass(default), f"{name}: config's default must be a dataclass instance"
        PRESETS[name] = Preset(name, description, factory, default)
        return factory

    return add


def config_dict(config: Any) -> dict[str, Any]:
    """A preset config as JSON-able data (tuples become lists, as JSON has them)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
