"""The network: blocks C1..C4, global average pooling, a linear classifier. No max-pooling anywhere."""

from __future__ import annotations

import torch
from torch import nn

from cifar_cli.models.config import NetConfig
from cifar_cli.models.layers import ConvBNReLU, Residual, SeparableConvBNReLU


class CifarNet(nn.Module):
    """32x32 -> C1 (32x32) -> C2 (16x16) -> C3 (8x8, dilated) -> C4 (4x4) -> GAP -> linear.

    Each block after C1 downsamples with a stride-2 convolution, then refines with a residual pair of
    depthwise-separable convolutions; C3's pair is dilated to widen the receptive field cheaply.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        w1, w2, w3, w4 = config.widths
        self.c1 = nn.Sequential(
            ConvBNReLU(3, w1),
            Residual(SeparableConvBNReLU(w1, w1), SeparableConvBNReLU(w1, w1)),
        )
        self.c2 = nn.Sequential(
            ConvBNReLU(w1, w2, stride=2),
            Residual(SeparableConvBNReLU(w2, w2), SeparableConvBNReLU(w2, w2)),
        )
        self.c3 = nn.Sequential(
            SeparableConvBNReLU(w2, w3, stride=2),
            Residual(SeparableConvBNReLU(w3, w3, dilation=2), SeparableConvBNReLU(w3, w3, dilation=2)),
        )
        self.c4 = nn.Sequential(
            SeparableConvBNReLU(w3, w4, stride=2),
            Residual(SeparableConvBNReLU(w4, w4), SeparableConvBNReLU(w4, w4)),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(w4, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gap(self.c4(self.c3(self.c2(self.c1(x))))))
