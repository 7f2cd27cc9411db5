"""The building blocks: each convolution carries its BatchNorm and activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def whitening_filters(images: torch.Tensor, count: int, eps: float = 5e-4) -> torch.Tensor:
    """`count` 3x3 filters: +- the count/2 strongest whitening directions of the images' 3x3 patches.

    Each direction is an eigenvector of the patches' second-moment matrix over the square root of its
    eigenvalue, so the filters' responses have unit variance and no correlation: the first layer starts
    out seeing every kind of local contrast equally (airbench's first layer). `eps` keeps the weakest
    directions from being blown up; the sign pair lets the activation keep both halves of each.
    """
    channels = images.shape[1]
    patches = F.unfold(images.double(), 3).transpose(1, 2).reshape(-1, channels * 9)
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))  # eigenvalues ascending
    half = count // 2
    strongest = vectors[:, -half:].flip(1).T / torch.sqrt(values[-half:].flip(0)[:, None] + eps)
    filters = strongest.float().view(half, channels, 3, 3)
    return torch.cat([filters, -filters])
