"""The networks: presets by name (registry), the user's own by FILE.py:NAME (spec), and their parts."""

from cifar_cli.models.config import NetConfig, S9Config
from cifar_cli.models.net import CifarNet
from cifar_cli.models.presets import LEGACY_MODEL  # importing presets registers the built-in networks
from cifar_cli.models.registry import PRESETS, register_model
from cifar_cli.models.spec import (
    ModelSpec,
    choose_network,
    create_model,
    preset_spec,
    resolve_model,
    source_changed,
    source_file,
    spec_to_build,
)
from cifar_cli.settings import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "LEGACY_MODEL", "PRESETS", "CifarNet", "ModelSpec", "NetConfig", "S9Config",
           "choose_network", "create_model", "preset_spec", "register_model", "resolve_model", "source_changed",
           "source_file", "spec_to_build"]
