"""The network: blocks C1..C4, global average pooling, a linear classifier. No max-pooling anywhere."""

from __future__ import annotations

import torch
from torch import nn

from cifar_cli.models.config import NetConfig
from cifar_cli.models.layers import ConvBNAct, Residual, SeparableConvBNAct, whitening_filters


class CifarNet(nn.Module):
    """32x32 -> C1 (32x32) -> C2 (16x16) -> C3 (8x8, dilated) -> C4 (4x4) -> GAP -> linear.

    Each block after C1 downsamples with a stride-2 convolution, then refines with residual pairs of
    depthwise-separable convolutions (`config.pairs` of them); C3's pairs are dilated to widen the
    receptive field cheaply.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        w1, w2, w3, w4 = config.widths
        act = config.activation

        def pairs(block: int, width: int, dilation: int = 1) -> list[nn.Module]:
            return [Residual(SeparableConvBNAct(width, width, dilation=dilation, activation=act),
                             SeparableConvBNAct(width, width, dilation=dilation, activation=act))
                    for _ in range(config.pairs[block])]

        self.c1 = nn.Sequential(ConvBNAct(3, w1, activation=act), *pairs(0, w1))
        # A full 3x3 entry into C2 holds 9*w1*w2 weights (41,472 at 48->96); separable, ~8x fewer.
        c2_entry = SeparableConvBNAct if config.separable_c2 else ConvBNAct
        self.c2 = nn.Sequential(c2_entry(w1, w2, stride=2, activation=act), *pairs(1, w2))
        self.c3 = nn.Sequential(SeparableConvBNAct(w2, w3, stride=2, activation=act), *pairs(2, w3, dilation=2))
        self.c4 = nn.Sequential(SeparableConvBNAct(w3, w4, stride=2, activation=act), *pairs(3, w4))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(w4, config.num_classes))
        if config.whitened_stem:
            self.stem.weight.requires_grad_(False)  # set from the data by init_from_images, never trained

    @property
    def stem(self) -> nn.Conv2d:
        return self.c1[0][0]

    def init_from_images(self, images: torch.Tensor) -> None:
        """Called once by a fresh run, before its first step, with normalised training images."""
        if self.config.whitened_stem:
            with torch.no_grad():
                self.stem.weight.copy_(whitening_filters(images, self.stem.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gap(self.c4(self.c3(self.c2(self.c1(x))))))
