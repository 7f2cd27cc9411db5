"""The optional extras: libraries that one feature needs and the base install leaves out. A feature asks
for its extra before it starts, and a missing library is one line naming the command that installs it."""

from __future__ import annotations

import importlib.util

from cifar_cli.errors import CifarError

# extra -> the modules it provides (pyproject.toml's [project.optional-dependencies] installs them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "tensorboard": ("tensorboard",),
    "app": ("gradio",),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them: it is cheap)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, feature: str) -> None:
    """Raise a one-line CifarError naming the install command if `feature` cannot run for want of `extra`."""
    if absent := missing(extra):
        raise CifarError(f"{feature} needs {', '.join(absent)}, which the base install leaves out: "
                         f"pip install 'cifar-cli[{extra}]'")
