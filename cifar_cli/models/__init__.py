from cifar_cli.models.config import ARCH, NetConfig
from cifar_cli.models.net import CifarNet, build_model

__all__ = ["ARCH", "CifarNet", "NetConfig", "build_model"]
