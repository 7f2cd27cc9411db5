"""The candidate networks of results/experiments.md, each usable as `--model experiments/candidates.py:NAME`.

Every one keeps the assignment's rules (`cifar summary --model experiments/candidates.py:NAME` passes them all)
and differs from a preset in one idea, named by its function. Each builds the same modules in the same order
as the runs recorded in results/experiments.md, so a seed gives those runs' initial weights; what each run
measured is there, not here.

- `wide48`: the preset `cifarnet-ds48`: `cifarnet-ds` with widths (48, 96, 128, 160), more channels in the
  expensive 32x32 and 16x16 blocks.
- `post_activation`: each residual branch ends in BatchNorm with its scale at zero and the ReLU comes after
  the sum, so every block starts as the identity (the "zero-init" idea done so it can learn).
- `lean_deep`: no residual pair at 32x32 (C1 is one convolution); the time saved buys a second residual
  pair at 16x16 and at 8x8, with post-activation blocks, widths (32, 64, 128, 160).
- `deep_c3`: a second dilated residual pair at 8x8, paid for by a narrower C4: widths (32, 64, 128, 160).
- `deep_c2`: `cifarnet-ds48` with a second residual pair at 16x16, paid for by a narrower C4: widths
  (48, 96, 128, 136).
- `c4_at_8x8`: `cifarnet-ds48` with C4 at 8x8 instead of 4x4 (its first convolution has stride 1): the same
  196,538 parameters, more compute per parameter where it is cheap.
- `deep_c2_gelu`: the preset `cifarnet-gelu`: `deep_c2` with every ReLU replaced by GELU (airbench's
  activation), the same weights.
- `deep16`, `deep8`, `deep32`, `deep16_8`, `deep16x4`: `cifarnet-gelu` with C2's strided entry
  depthwise-separable as well (`NetConfig.separable_c2`: 5,232 weights instead of 41,472), the weights saved
  spent on depth: a third pair at 16x16 (`deep16`), a second at 8x8 (`deep8`), a second at 32x32
  (`deep32`), both of the first two with C3 and C4 narrower (`deep16_8`), a fourth pair at 16x16 with C4
  narrower (`deep16x4`).
- `whitened`: `cifarnet-gelu` whose first convolution is fixed to +- the 24 strongest whitening directions
  of 3x3 patches of the first 5,000 training images (`NetConfig.whitened_stem`; airbench's first layer),
  never trained: the same network as the preset `cifarnet-whiten`.
- `gated`: `whitened` with an ECA channel gate at the end of each residual branch: the branch's output is
  scaled per channel by sigmoid(a 3-tap filter across the channels' spatial means), so each block can turn
  its channels up or down for the image at hand (Wang et al., ECA-Net, 2020). Three weights per gate, 15 in
  all; the receptive-field walk counts only the convolutions' path.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from cifar_cli.models import PRESETS
from cifar_cli.models.config import NUM_CLASSES, NetConfig
from cifar_cli.models.layers import ConvBNAct, Residual, SeparableConvBNAct
from cifar_cli.models.net import CifarNet


class PostActivationResidual(nn.Module):
    """ReLU(x + BN(sep(ReLU(BN(sep(x)))))), the last BatchNorm's scale at zero: the block starts as identity."""

    def __init__(self, width: int, dilation: int = 1):
        super().__init__()
        first = SeparableConvBNAct(width, width, dilation=dilation)
        last = nn.Sequential(*list(SeparableConvBNAct(width, width, dilation=dilation))[:-1])  # ReLU: after the sum
        self.body = nn.Sequential(first, last)
        nn.init.zeros_(last[2].weight)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Candidate(nn.Module):
    """cifarnet-ds's layout with `pairs[i]` residual pairs in block i, plain or post-activation; C4 at 4x4
    (`c4_stride` 2) or at 8x8 (1): what CifarNet cannot build."""

    def __init__(self, widths: tuple[int, int, int, int], pairs: tuple[int, int, int, int], post: bool,
                 c4_stride: int = 2):
        super().__init__()
        w1, w2, w3, w4 = widths

        def residuals(width: int, count: int, dilation: int = 1) -> list[nn.Module]:
            if post:
                return [PostActivationResidual(width, dilation) for _ in range(count)]
            return [Residual(SeparableConvBNAct(width, width, dilation=dilation),
                             SeparableConvBNAct(width, width, dilation=dilation)) for _ in range(count)]

        self.c1 = nn.Sequential(ConvBNAct(3, w1), *residuals(w1, pairs[0]))
        self.c2 = nn.Sequential(ConvBNAct(w1, w2, stride=2), *residuals(w2, pairs[1]))
        self.c3 = nn.Sequential(SeparableConvBNAct(w2, w3, stride=2), *residuals(w3, pairs[2], dilation=2))
        self.c4 = nn.Sequential(SeparableConvBNAct(w3, w4, stride=c4_stride), *residuals(w4, pairs[3]))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(NetConfig.dropout), nn.Linear(w4, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gap(self.c4(self.c3(self.c2(self.c1(x))))))


def wide48() -> CifarNet:
    return PRESETS["cifarnet-ds48"].create()


def post_activation() -> Candidate:
    return Candidate((32, 64, 128, 192), (1, 1, 1, 1), post=True)


def lean_deep() -> Candidate:
    return Candidate((32, 64, 128, 160), (0, 2, 2, 1), post=True)


def deep_c3() -> CifarNet:
    return CifarNet(NetConfig(widths=(32, 64, 128, 160), pairs=(1, 1, 2, 1)))


def deep_c2() -> CifarNet:
    return CifarNet(NetConfig(widths=(48, 96, 128, 136), pairs=(1, 2, 1, 1)))


def c4_at_8x8() -> Candidate:
    return Candidate((48, 96, 128, 160), (1, 1, 1, 1), post=False, c4_stride=1)


def deep_c2_gelu() -> CifarNet:
    return PRESETS["cifarnet-gelu"].create()


def _separable_c2(widths: tuple[int, int, int, int], pairs: tuple[int, int, int, int]) -> CifarNet:
    return CifarNet(NetConfig(widths=widths, pairs=pairs, activation="gelu", separable_c2=True))


def deep16() -> CifarNet:
    return _separable_c2((48, 96, 128, 136), (1, 3, 1, 1))


def deep8() -> CifarNet:
    return _separable_c2((48, 96, 128, 136), (1, 2, 2, 1))


def deep32() -> CifarNet:
    return _separable_c2((48, 96, 128, 136), (2, 2, 1, 1))


def deep16_8() -> CifarNet:
    return _separable_c2((48, 96, 112, 128), (1, 3, 2, 1))


def deep16x4() -> CifarNet:
    return _separable_c2((48, 96, 128, 120), (1, 4, 1, 1))


def whitened() -> CifarNet:
    return CifarNet(dataclasses.replace(PRESETS["cifarnet-gelu"].default_config, whitened_stem=True))


class ChannelGate(nn.Module):
    """ECA: x * sigmoid(w * mean(x)), w a 3-tap filter across neighbouring channels' spatial means.

    The weights start at zero (every gate 0.5, the same for each channel) so the network starts as the
    ungated one with its branches halved; they are vectors, so weight decay leaves them alone. The filter is
    written as three shifted slices, not a conv1d: it mixes channels, never pixels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = F.pad(x.mean((2, 3)), (1, 1))
        w0, w1, w2 = self.weight
        mixed = w0 * means[:, :-2] + w1 * means[:, 1:-1] + w2 * means[:, 2:]
        return x * torch.sigmoid(mixed)[:, :, None, None]


def gated() -> CifarNet:
    net = whitened()
    for block in net.modules():
        if isinstance(block, Residual):
            block.body.append(ChannelGate())  # after the network is built: its other weights are the same
    return net
