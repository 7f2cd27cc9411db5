"""The assignment's reference network ("S9"), rebuilt layer for layer from its published description.

99,912 parameters; 32 -> 15 -> 11 -> 3 -> 1 pixels by unpadded strided and dilated convolutions (no
pooling until the global average), four residual adds, two depthwise-separable convolutions. Its layers
keep their original names (conv1..conv12, trans1..trans3), grouped into the blocks C1..C4.
"""

from __future__ import annotations

import torch
from torch import nn

from cifar_cli.models.config import S9Config


def _conv(cin: int, cout: int, dropout: float = 0.0, stride: int = 1, padding: int = 1,
          dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """Conv (or depthwise 3x3 + pointwise 1x1) - BatchNorm - ReLU, then Dropout when asked for."""
    if separable:
        conv = [nn.Conv2d(cin, cin, 3, padding=padding, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False)]
    else:
        conv = [nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, dilation=dilation, bias=False)]
    layers = [*conv, nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.Dropout(dropout)) if dropout else nn.Sequential(*layers)


def _transition(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)  # a bare 1x1: no BatchNorm, no ReLU, as in the reference


class _Block(nn.Module):
    """Named layers run in order; the layers listed in `residual` add their input to their output."""

    def __init__(self, residual: tuple[str, ...], **layers: nn.Module):
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, layer in self.named_children():
            x = x + layer(x) if name in self.residual else layer(x)
        return x


class S9Reference(nn.Module):
    def __init__(self, config: S9Config):
        super().__init__()
        n, h, p = config.channels, config.channels // 2, config.dropout
        self.c1 = _Block(("conv2",), conv1=_conv(3, h), conv2=_conv(h, h), conv3=_conv(h, n, stride=2, padding=0),
                         trans1=_transition(n, h))
        self.c2 = _Block(("conv5",), conv4=_conv(h, n, p), conv5=_conv(n, n, p),
                         conv6=_conv(n, n, p, padding=0, dilation=2), trans2=_transition(n, h))
        self.c3 = _Block(("conv8",), conv7=_conv(h, n, p, separable=True), conv8=_conv(n, n, p),
                         conv9=_conv(n, n, p, padding=0, dilation=4), trans3=_transition(n, h))
        self.c4 = _Block(("conv11",), conv10=_conv(h, n, separable=True), conv11=_conv(n, n),
                         conv12=_conv(n, n, padding=0))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(n, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.c4(self.c3(self.c2(self.c1(x))))).flatten(1))
