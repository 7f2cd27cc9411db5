"""The networks: presets by name (registry), the user's own by FILE.py:NAME (spec), and their parts."""

from cifar_cli.models.config import NetConfig, S9Config
from cifar_cli.models.net import CifarNet
from cifar_cli.models.presets import DEFAULT_MODEL
from cifar_cli.models.registry import PRESETS, register_model
from cifar_cli.models.spec import ModelSpec, create_model, preset_spec, resolve_model, source_changed

__all__ = ["DEFAULT_MODEL", "PRESETS", "CifarNet", "ModelSpec", "NetConfig", "S9Config", "create_model",
           "preset_spec", "register_model", "resolve_model", "source_changed"]
