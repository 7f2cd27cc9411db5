"""cifar-cli: train, inspect and evaluate small convolutional networks on CIFAR-10."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cifar-cli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
