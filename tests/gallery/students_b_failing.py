"""Gallery B, the networks that fail one or more rules (built from students_b_passing.py's parts).


The styles imitate public EVA / ERA (S7-S9, "advanced convolutions") solutions that lean functional or modern:
forwards written with F.relu / F.conv2d on nn.Parameter weights, custom depthwise-separable modules, MobileNet-style
depthwise -> BN -> ReLU -> pointwise, depth multipliers, squeeze-excitation side branches, ModuleDict / ModuleList /
nn.Sequential stages, a `blocks = (...)` attribute, Mish / SiLU / GELU, and a network built by a function that
returns an nn.Sequential.

Every network takes N x 3 x 32 x 32 and returns N x 10. Each docstring gives the receptive field worked out by hand
with rf_out = rf_in + dilation * (kernel - 1) * jump_in, jump_out = jump_in * stride (1x1 convs add nothing;
identity shortcuts add nothing). EXPECTED at the end lists, per class, that receptive field and exactly the rules
that must fail (rule names as in the rules spec); every other rule must pass.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from students_b_passing import (
    BPartDepthwiseResidual,
    BPartDilatedPointwise,
    BPartSqueezeExcite,
    b_conv_bn,
    b_dw_pw,
)


class BMaxPoolMobile(nn.Module):
    """EVA S7 style C1..C4 (capitalised attributes) with an F.max_pool2d(x, 2) transition after each of C1, C2, C3,
    a MobileNet unit and a dilated conv in C2, head F.adaptive_avg_pool2d -> view -> log_softmax.
    Fails: no max-pooling.

    RF: C1 3, 5; maxpool 2x2 s2 5+1=6 (j2); C2 1x1, dw 6+2*2=10, 1x1, d2 10+2*2*2=18; maxpool 18+2=20 (j4);
    C3 28, 36; maxpool 36+4=40 (j8); C4 40+2*8=56, 1x1 = 56. Map 32 -> 16 -> 8 -> 4.
    """

    def __init__(self):
        super().__init__()
        self.C1 = nn.Sequential(b_conv_bn(3, 16, drop=0.05), b_conv_bn(16, 32, drop=0.05))
        self.C2 = nn.Sequential(
            b_conv_bn(32, 16, kernel=1, padding=0),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            b_conv_bn(16, 32, kernel=1, padding=0),
            b_conv_bn(32, 32, padding=2, dilation=2, drop=0.05),
        )
        self.C3 = nn.Sequential(b_conv_bn(32, 48, drop=0.05), b_conv_bn(48, 48, drop=0.05))
        self.C4 = nn.Sequential(b_conv_bn(48, 64), nn.Conv2d(64, 10, 1))

    def forward(self, x):
        x = F.max_pool2d(self.C1(x), 2)
        x = F.max_pool2d(self.C2(x), 2)
        x = F.max_pool2d(self.C3(x), 2)
        x = self.C4(x)
        x = F.adaptive_avg_pool2d(x, 1).view(-1, 10)
        return F.log_softmax(x, dim=-1)


class BGroupedNotDepthwise(nn.Module):
    """Student who read "depthwise" as "grouped": groups=2/4/8 convs followed by 1x1s, never groups == channels.
    Head: 1x1 conv to 10 -> nn.AvgPool2d(kernel_size=8) on the 8x8 map -> view -> log_softmax.
    Fails: >= 1 depthwise-separable conv.

    RF: 3; g2 5, 1x1, s2 7 (j2); g4 d2 7+8=15, 1x1, s2 19 (j4); g8 d2 19+16=35, 1x1, g2 43, g4 51, 1x1 = 51.
    """

    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(b_conv_bn(3, 32, drop=0.05))
        self.convblock2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            b_conv_bn(32, 48, kernel=1, padding=0),
            b_conv_bn(48, 48, stride=2, drop=0.05),
        )
        self.convblock3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=2, dilation=2, groups=4, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            b_conv_bn(48, 64, kernel=1, padding=0),
            b_conv_bn(64, 64, stride=2, drop=0.05),
        )
        self.convblock4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=8, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            b_conv_bn(64, 96, kernel=1, padding=0),
            nn.Conv2d(96, 96, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(96), nn.ReLU(),
            nn.Conv2d(96, 96, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(96), nn.ReLU(),
            nn.Conv2d(96, 10, 1),
        )
        self.gap = nn.AvgPool2d(kernel_size=8)

    def forward(self, x):
        x = self.convblock4(self.convblock3(self.convblock2(self.convblock1(x))))
        x = self.gap(x)
        return F.log_softmax(x.view(-1, 10), dim=-1)


class BDilatedPointwiseOnly(nn.Module):
    """ModuleList of four stages; the student's only "dilated conv" is a 1x1 transition written as
    F.conv2d(x, w, dilation=2). Head x.mean((2, 3)) -> Linear. Fails: >= 1 dilated conv.

    RF: 3, 5; s2 7 (j2), dw 11, 1x1; dilated 1x1 11, s2 15 (j4), 23; 31, 39, 47 = 47. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(b_conv_bn(3, 16), b_conv_bn(16, 32)),
            nn.Sequential(b_conv_bn(32, 32, stride=2), b_dw_pw(32, 48)),
            nn.Sequential(BPartDilatedPointwise(48, 48), b_conv_bn(48, 48, stride=2), b_conv_bn(48, 48)),
            nn.Sequential(b_conv_bn(48, 56), b_conv_bn(56, 56), b_conv_bn(56, 56)),
        ])
        self.fc = nn.Linear(56, 10)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean((2, 3)))


class BGroupNormSiLU(nn.Module):
    """Modern style stage1..stage4 with GroupNorm + SiLU everywhere; the only BatchNorm is a BatchNorm1d after the
    global average pool. Fails: BatchNorm.
    Decision: GroupNorm pools statistics over positions, so it is not a per-pixel layer; the depthwise convs here
    feed their pointwise through SiLU only (no norm between), so the separable rule passes on any reading.

    RF: 3; s2 5 (j2), dw d2 5+8=13, 1x1; s2 17 (j4), 25; 33, dw d2 33+16=49, 1x1 = 49. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()

        def conv_gn(cin, cout, kernel=3, stride=1, dilation=1, groups=1, norm=True):
            padding = dilation * (kernel // 2)
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                             bias=False)
            return nn.Sequential(conv, nn.GroupNorm(8, cout), nn.SiLU()) if norm else nn.Sequential(conv, nn.SiLU())

        self.stage1 = conv_gn(3, 32)
        self.stage2 = nn.Sequential(conv_gn(32, 48, stride=2), conv_gn(48, 48, dilation=2, groups=48, norm=False),
                                    conv_gn(48, 64, kernel=1))
        self.stage3 = nn.Sequential(conv_gn(64, 64, stride=2), conv_gn(64, 64))
        self.stage4 = nn.Sequential(conv_gn(64, 80), conv_gn(80, 80, dilation=2, groups=80, norm=False),
                                    conv_gn(80, 96, kernel=1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(96), nn.Linear(96, 10))

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.head(x)


class BShallowRF44(nn.Module):
    """Compact Mish network with average-pool (not max-pool) downsampling, blocks c1..c4, head 1x1 conv ->
    F.avg_pool2d(x, x.shape[-1]) -> log_softmax. Its receptive field is exactly 44, which is not > 44.
    Fails: receptive field > 44.

    RF: 3, 5; avgpool 2x2 s2 5+1=6 (j2); dw 10, 1x1, d2 10+2*2*2=18; avgpool 18+2=20 (j4); 28, 36; 44,
    1x1 = 44. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(b_conv_bn(3, 16, act=nn.Mish), b_conv_bn(16, 32, act=nn.Mish), nn.AvgPool2d(2))
        self.c2 = nn.Sequential(b_dw_pw(32, 48, act=nn.Mish), b_conv_bn(48, 48, padding=2, dilation=2, act=nn.Mish),
                                nn.AvgPool2d(2))
        self.c3 = nn.Sequential(b_conv_bn(48, 64, act=nn.Mish), b_conv_bn(64, 64, act=nn.Mish))
        self.c4 = nn.Sequential(b_conv_bn(64, 64, act=nn.Mish), nn.Conv2d(64, 10, 1))

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = F.avg_pool2d(x, x.shape[-1])
        return F.log_softmax(x.view(-1, 10), dim=-1)


class BEightBlocks(nn.Module):
    """EVA S7 style with eight numbered convblocks and no `blocks` attribute, so there are no four blocks.
    Head: bare nn.AdaptiveAvgPool2d(1) + bare 1x1 conv -> view -> log_softmax. Fails: blocks C1 C2 C3 C4.

    RF: 3, 5; s2 7 (j2); dw 11, 1x1; d2 11+8=19; s2 23 (j4); 31; d2 31+16=47 = 47. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.convblock1 = b_conv_bn(3, 16, drop=0.05)
        self.convblock2 = b_conv_bn(16, 32, drop=0.05)
        self.convblock3 = b_conv_bn(32, 32, stride=2, drop=0.05)
        self.convblock4 = b_dw_pw(32, 48)
        self.convblock5 = b_conv_bn(48, 48, padding=2, dilation=2, drop=0.05)
        self.convblock6 = b_conv_bn(48, 64, stride=2, drop=0.05)
        self.convblock7 = b_conv_bn(64, 64, drop=0.05)
        self.convblock8 = b_conv_bn(64, 64, padding=2, dilation=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = self.convblock2(self.convblock1(x))
        x = self.convblock4(self.convblock3(x))
        x = self.convblock6(self.convblock5(x))
        x = self.convblock8(self.convblock7(x))
        x = self.fc(self.gap(x))
        return F.log_softmax(x.view(-1, 10), dim=-1)


class BTooWide(nn.Module):
    """MobileNet with a depth multiplier of 4 and wide 3x3 convs in an nn.Sequential(OrderedDict(c1=..., ...)).
    About 250k parameters. Fails: parameters < 200,000.

    RF: 3; dw(x4) 5, 1x1; s2 7 (j2), d2 15; s2 19 (j4), 27; d2 27+2*2*4=43, dw(x2) 51, 1x1 = 51.
    Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(OrderedDict(
            c1=nn.Sequential(b_conv_bn(3, 32), b_dw_pw(32, 64, multiplier=4)),
            c2=nn.Sequential(b_conv_bn(64, 64, stride=2), b_conv_bn(64, 64, padding=2, dilation=2)),
            c3=nn.Sequential(b_conv_bn(64, 72, stride=2), b_conv_bn(72, 72)),
            c4=nn.Sequential(b_conv_bn(72, 80, padding=2, dilation=2), b_dw_pw(80, 128, multiplier=2)),
        ))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.stages(x)
        return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))


class BThreeStages(nn.Module):
    """ModuleList of only three stages, and an nn.AvgPool2d(4) on the 8x8 map (leaves 2x2) -> flatten -> Linear.
    Fails: global average pooling before the classifier; blocks C1 C2 C3 C4.

    RF: 3, 5; s2 7 (j2), dw d2 15, 1x1; s2 19 (j4), 27, 35, d2 35+16=51; avgpool 4x4 s4 51+3*4=63 (j16) = 63.
    The last stage is written flat (bare layers), so no module has four container children holding convs.
    Decision: with no global pooling, the last feature map is the 2x2 one the classifier flattens, and the
    non-global AvgPool2d(4) window counts like a conv (63). Measured before that pool it is 51: > 44 either way.
    """

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(b_conv_bn(3, 32), b_conv_bn(32, 32)),
            nn.Sequential(b_conv_bn(32, 48, stride=2), b_dw_pw(48, 64, dilation=2)),
            nn.Sequential(*b_conv_bn(64, 56, stride=2), *b_conv_bn(56, 56), *b_conv_bn(56, 56),
                          *b_conv_bn(56, 56, padding=2, dilation=2)),
        ])
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(56 * 2 * 2, 10)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        x = self.pool(x)
        return F.log_softmax(self.fc(x.flatten(1)), dim=-1)


class BSEFlattenHead(nn.Module):
    """conv_block1..conv_block4 with GELU and a squeeze-excitation gate at the end: its global average lives only
    in the SE side branch, while the classifier flattens the 4x4 map into a Linear.
    Fails: global average pooling before the classifier.

    RF: 3, dw 5, 1x1; s2 7 (j2), d2 15; s2 19 (j4), 27; s2 35 (j8), 51 = 51 (the SE gate is a side branch, as in
    BSqueezeExcite). Map 32 -> 16 -> 8 -> 4.
    """

    def __init__(self):
        super().__init__()
        self.conv_block1 = nn.Sequential(b_conv_bn(3, 16, act=nn.GELU), b_dw_pw(16, 32, act=nn.GELU))
        self.conv_block2 = nn.Sequential(b_conv_bn(32, 32, stride=2, act=nn.GELU),
                                         b_conv_bn(32, 32, padding=2, dilation=2, act=nn.GELU))
        self.conv_block3 = nn.Sequential(b_conv_bn(32, 48, stride=2, act=nn.GELU), b_conv_bn(48, 48, act=nn.GELU))
        self.conv_block4 = nn.Sequential(b_conv_bn(48, 48, stride=2, act=nn.GELU), b_conv_bn(48, 32, act=nn.GELU),
                                         BPartSqueezeExcite(32))
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv_block4(self.conv_block3(self.conv_block2(self.conv_block1(x))))
        x = self.fc(self.dropout(x.flatten(1)))
        return F.log_softmax(x, dim=-1)


class BResidualBetween(nn.Module):
    """`blocks = ("prep", "res1", "trans", "res2")`; each depthwise conv sits in a residual unit whose add comes
    right after it, before the following 1x1: a residual add between depthwise and pointwise.
    Fails: >= 1 depthwise-separable conv.

    RF: 3, 5; s2 7 (j2), dw d2 body 7+8=15, 1x1; s2 19 (j4), dw body 27, 1x1; 35, dw d2 body 35+16=51, 1x1 = 51.
    """

    blocks = ("prep", "res1", "trans", "res2")

    def __init__(self):
        super().__init__()
        self.prep = nn.Sequential(b_conv_bn(3, 32), b_conv_bn(32, 32))
        self.res1 = nn.Sequential(b_conv_bn(32, 48, stride=2), BPartDepthwiseResidual(48, dilation=2),
                                  b_conv_bn(48, 64, kernel=1, padding=0))
        self.trans = nn.Sequential(b_conv_bn(64, 64, stride=2), BPartDepthwiseResidual(64),
                                   b_conv_bn(64, 64, kernel=1, padding=0))
        self.res2 = nn.Sequential(b_conv_bn(64, 64), BPartDepthwiseResidual(64, dilation=2),
                                  b_conv_bn(64, 96, kernel=1, padding=0))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        x = self.res2(self.trans(self.res1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class BExpandThenDepthwise(nn.Module):
    """Half-understood inverted bottleneck, block1..block4: a 1x1 expand BEFORE each depthwise conv, but no 1x1
    after it (block2's depthwise feeds block3's 3x3 conv; block4's feeds the GAP). GELU.
    Fails: >= 1 depthwise-separable conv.

    RF: 3, 5; s2 7 (j2), 1x1, dw d2 15; s2 19 (j4), 27; 35, 1x1, dw d2 35+16=51 = 51. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(b_conv_bn(3, 24, act=nn.GELU), b_conv_bn(24, 32, act=nn.GELU, drop=0.05))
        self.block2 = nn.Sequential(
            b_conv_bn(32, 48, stride=2, act=nn.GELU), b_conv_bn(48, 96, kernel=1, padding=0, act=nn.GELU),
            nn.Conv2d(96, 96, 3, padding=2, dilation=2, groups=96, bias=False), nn.BatchNorm2d(96), nn.GELU(),
        )
        self.block3 = nn.Sequential(b_conv_bn(96, 64, stride=2, act=nn.GELU), b_conv_bn(64, 64, act=nn.GELU))
        self.block4 = nn.Sequential(
            b_conv_bn(64, 64, act=nn.GELU), b_conv_bn(64, 128, kernel=1, padding=0, act=nn.GELU),
            nn.Conv2d(128, 128, 3, padding=2, dilation=2, groups=128, bias=False), nn.BatchNorm2d(128), nn.GELU(),
        )
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).squeeze(-1).squeeze(-1))


EXPECTED = {
    "BMaxPoolMobile": {"receptive_field": 56, "fails": ["no max-pooling"]},
    "BGroupedNotDepthwise": {"receptive_field": 51, "fails": [">= 1 depthwise-separable conv"]},
    "BDilatedPointwiseOnly": {"receptive_field": 47, "fails": [">= 1 dilated conv"]},
    "BGroupNormSiLU": {"receptive_field": 49, "fails": ["BatchNorm"]},
    "BShallowRF44": {"receptive_field": 44, "fails": ["receptive field > 44"]},
    "BEightBlocks": {"receptive_field": 47, "fails": ["blocks C1 C2 C3 C4"]},
    "BTooWide": {"receptive_field": 51, "fails": ["parameters < 200,000"]},
    "BThreeStages": {"receptive_field": 63,
                     "fails": ["global average pooling before the classifier", "blocks C1 C2 C3 C4"]},
    "BSEFlattenHead": {"receptive_field": 51, "fails": ["global average pooling before the classifier"]},
    "BResidualBetween": {"receptive_field": 51, "fails": [">= 1 depthwise-separable conv"]},
    "BExpandThenDepthwise": {"receptive_field": 51, "fails": [">= 1 depthwise-separable conv"]},
}
