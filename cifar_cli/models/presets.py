"""The built-in networks. Adding one is one decorated factory here."""

from __future__ import annotations

from dataclasses import replace

from cifar_cli.models.config import NetConfig, S9Config
from cifar_cli.models.net import CifarNet
from cifar_cli.models.registry import register_model
from cifar_cli.models.s9 import S9Reference

LEGACY_MODEL = "cifarnet-ds"  # what a checkpoint whose metadata names no preset holds (the oldest format)
GELU = NetConfig(widths=(48, 96, 128, 136), pairs=(1, 2, 1, 1), activation="gelu")  # cifarnet-whiten's too


@register_model("cifarnet-whiten", "cifarnet-gelu, its first convolution fixed to the patches' whitening; the default")
def cifarnet_whiten(config: NetConfig = replace(GELU, whitened_stem=True)) -> CifarNet:  # noqa: B008 - frozen
    return CifarNet(config)


@register_model("cifarnet-gelu", "cifarnet-ds48 plus a residual pair at 16x16, C4 136 wide, GELU")
def cifarnet_gelu(config: NetConfig = GELU) -> CifarNet:
    return CifarNet(config)


@register_model("cifarnet-ds48", "cifarnet-ds widened to 48 channels at 32x32 (48, 96, 128, 160)")
def cifarnet_ds48(config: NetConfig = NetConfig(widths=(48, 96, 128, 160))) -> CifarNet:  # noqa: B008 - frozen
    return CifarNet(config)


@register_model("cifarnet-ds", "residual depthwise-separable C1-C4, strided and dilated")
def cifarnet_ds(config: NetConfig = NetConfig()) -> CifarNet:  # noqa: B008 - frozen, never mutated
    return CifarNet(config)


@register_model("s9-reference", "the assignment's reference network, rebuilt layer for layer")
def s9_reference(config: S9Config = S9Config()) -> S9Reference:  # noqa: B008 - frozen, never mutated
    return S9Reference(config)
