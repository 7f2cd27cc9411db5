"""cifar-cli: train, inspect and evaluate small convolutional networks on CIFAR-10."""

# The one place the version is written: pyproject.toml reads it from here (tool.setuptools.dynamic), so an
# installed package and a source tree on PYTHONPATH report the same version. CHANGELOG.md says what changed.
__version__ = "0.2.0"
