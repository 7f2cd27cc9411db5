"""The building blocks: each convolution carries its BatchNorm and activation."""

from __future__ import annotations

import torch
from torch import nn


def activation_layer(name: str) -> nn.Module:
    """One of config.ACTIVATIONS (NetConfig checks the name before a network is built)."""
    # ReLU in place saves a 32x32 activation per layer; GELU needs its input for the backward pass.
    return {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}[name]()


class ConvBNAct(nn.Sequential):
    """A plain k x k convolution; `stride` downsamples, `dilation` widens the view at no parameter cost."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 activation: str = "relu"):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            activation_layer(activation),
        )


class SeparableConvBNAct(nn.Sequential):
    """Depthwise-separable convolution: a per-channel 3x3 then a 1x1 mix, ~8x fewer weights than a 3x3."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, activation: str = "relu"):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=dilation, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            activation_layer(activation),
        )


class Residual(nn.Module):
    """x + f(x) around shape-preserving layers: the identity path keeps gradients flowing."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
