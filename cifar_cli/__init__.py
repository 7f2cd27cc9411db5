"""cifar-cli: train, inspect and evaluate small convolutional networks on CIFAR-10.

The Python API (docs/api.md): `from cifar_cli import build, train, evaluate, load, predict`. It is
imported on first use, so that `import cifar_cli` (and the command line's shell completion) stays quick
and loads no torch.
"""

from typing import Any

# The one place the version is written: pyproject.toml reads it from here (tool.setuptools.dynamic), so an
# installed package and a source tree on PYTHONPATH report the same version. CHANGELOG.md says what changed.
__version__ = "0.2.0"

API = ("build", "train", "evaluate", "load", "predict", "TrainedRun", "Evaluation", "Prediction", "CifarError")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:  # PEP 562: cifar_cli.api (and torch) load when a name of it is first asked for
    if name in API:
        from cifar_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifar_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
