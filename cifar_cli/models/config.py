"""Preset settings: small frozen dataclasses, written into every checkpoint as plain JSON.

`config_from_dict` is the one way back from JSON: it refuses unknown fields and values of the wrong
kind, and each config's `__post_init__` refuses values out of range, so a forged checkpoint cannot make
us build something absurd.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from cifar_cli.data import CLASSES

Config = TypeVar("Config")
NUM_CLASSES = len(CLASSES)  # one logit per class, for every network
ACTIVATIONS = ("relu", "gelu")  # NetConfig.activation (built by models.layers.activation_layer)


@dataclass(frozen=True)
class NetConfig:
    """The cifarnet presets: the widths of blocks C1..C4, the classes, the dropout before the classifier,
    the residual pairs in each block, the activation after every BatchNorm, C2's kind of entry, whether
    the first convolution is learned or set from the data."""

    widths: tuple[int, int, int, int] = (32, 64, 128, 192)
    num_classes: int = NUM_CLASSES
    dropout: float = 0.05
    pairs: tuple[int, int, int, int] = (1, 1, 1, 1)  # checkpoints from before this field had one pair per block
    activation: str = "relu"  # likewise ReLU
    separable_c2: bool = False  # C2's strided entry depthwise-separable too; before this field, a full 3x3
    whitened_stem: bool = False  # C1's first conv fixed to the training patches' whitening; before: learned

    def __post_init__(self) -> None:
        if not all(0 < w <= 4096 for w in self.widths):
            raise ValueError(f"widths must be four integers in 1..4096, not {list(self.widths)}")
        if not all(0 <= p <= 16 for p in self.pairs):
            raise ValueError(f"pairs must be four integers in 0..16, not {list(self.pairs)}")
        if self.whitened_stem and not (self.widths[0] % 2 == 0 and self.widths[0] <= 2 * 27):
            raise ValueError(f"a whitened stem needs an even C1 width up to 54 (two filters per direction of a "
                             f"3x3x3 patch), not {self.widths[0]}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        _check_common(self.num_classes, self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class S9Config:
    """s9-reference: `channels` is the reference's n_channels (38); its 1x1 transitions halve it."""

    channels: int = 38
    num_classes: int = NUM_CLASSES
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not (2 <= self.channels <= 4096 and self.channels % 2 == 0):
            raise ValueError(f"channels must be an even integer in 2..4096, not {self.channels}")
        _check_common(self.num_classes, self.dropout)


def _check_common(num_classes: int, dropout: float) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, not {num_classes}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")


def _kind_matches(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(default, tuple):
        return (isinstance(value, (list, tuple)) and len(value) == len(default)
                and all(_kind_matches(v, d) for v, d in zip(value, default)))
    return isinstance(value, type(default))


def config_from_dict(base: Config, data: Any) -> Config:
    """Rebuild a config from its JSON form; raises ValueError naming what it cannot represent.

    Fields the JSON leaves out come from `base`, the preset's own settings, not the class defaults: two
    presets may share a config class (cifarnet-ds and cifarnet-ds48 differ only in their widths).
    """
    if not isinstance(data, dict):
        raise ValueError("model config is not an object")
    defaults = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    if unknown := sorted(set(data) - set(defaults)):
        raise ValueError(f"unknown model config fields: {', '.join(map(str, unknown))}")
    values = {}
    for name, default in defaults.items():
        value = data.get(name, default)
        if not _kind_matches(value, default):
            raise ValueError(f"{name} must be like {default!r}, not {value!r}")
        values[name] = tuple(value) if isinstance(default, tuple) else type(default)(value)
    return type(base)(**values)
