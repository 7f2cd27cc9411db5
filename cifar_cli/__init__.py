"""cifar-cli: train, inspect and evaluate small convolutional networks on CIFAR-10.

The Python API (docs/api.md): `from cifar_cli import build, train, evaluate, load, predict`. It is
imported on first use, so that `import cifar_cli` (and the command line's shell completion) stays quick
and loads no torch.
"""

from importlib import import_module
from typing import Any

# The one place the version is written: pyproject.toml reads it from here (tool.setuptools.dynamic), so an
# installed package and a source tree on PYTHONPATH report the same version. CHANGELOG.md says what changed.
__version__ = "0.4.0"

# What `from cifar_cli import ...` offers besides the version, and the module each name lives in.
_LAZY = {**dict.fromkeys(("build", "train", "evaluate", "load", "predict", "TrainedRun", "Evaluation",
                          "Prediction"), "cifar_cli.api"), "CifarError": "cifar_cli.errors"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:  # PEP 562: a name's module (and torch) loads when the name is first asked for
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifar_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
