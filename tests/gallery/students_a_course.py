"""Gallery A, the course layouts: convblocks with `# output_size / RF` comments and 1x1 transitions,
eight blocks, named blocks, and the course's reference network. students_a_heads.py and
students_a_variants.py hold the rest of gallery A.


Classic course styles: `nn.Sequential` convblocks with `# output_size / RF` comments, 1x1 transition blocks,
`x.view(-1, 10)` + `F.log_softmax` outputs, GAP as `nn.AvgPool2d(kernel_size=...)` or `nn.AdaptiveAvgPool2d`,
and the course's reference network (conv1..conv12 inside c1..c4, residual adds, padding=0).

Every class takes N x 3 x 32 x 32 and returns N x 10. Its docstring gives, by hand, the receptive field along
the longest path: rf_out = rf_in + dilation*(kernel-1)*jump_in, jump_out = jump_in*stride, written as
"RF: 3,5,7(s2 j2),..." (one number per conv or pooling window). EXPECTED, at the end, holds the hand verdicts:
the receptive field and exactly the rules that must fail (every other rule must pass).
"""

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

dropout_value = 0.05


class AConvBlockNet(nn.Module):
    """ERA S9 style: convblock1..4 (C1..C4) with 1x1 transition blocks trans1..3, stride-2 3x3 convs instead of
    max-pooling, a dilated conv in C2, a depthwise-separable conv in C3, GAP as nn.AvgPool2d(kernel_size=4) on
    the 4x4 map, then a 1x1 conv to 10 channels, x.view(-1, 10) and log_softmax.

    RF: 3,5,7(s2 j2) | 11,19(d2),23(s2 j4) | 31(dw),pw,39(s2 j8) | 55,71 = 71. Passes every rule.
    """

    def __init__(self):
        super().__init__()
        # C1
        self.convblock1 = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=(3, 3), padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(16),
            nn.Dropout(dropout_value),  # output_size = 32, RF = 3
            nn.Conv2d(16, 32, kernel_size=(3, 3), padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 32, RF = 5
            nn.Conv2d(32, 32, kernel_size=(3, 3), stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 16, RF = 7
        )
        # TRANSITION BLOCK 1
        self.trans1 = nn.Sequential(nn.Conv2d(32, 16, kernel_size=(1, 1), bias=False))  # output_size = 16
        # C2
        self.convblock2 = nn.Sequential(
            nn.Conv2d(16, 32, kernel_size=(3, 3), padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 16, RF = 11
            nn.Conv2d(32, 32, kernel_size=(3, 3), padding=2, dilation=2, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 16, RF = 19
            nn.Conv2d(32, 32, kernel_size=(3, 3), stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 8, RF = 23
        )
        # TRANSITION BLOCK 2
        self.trans2 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=(1, 1), bias=False))  # output_size = 8
        # C3: depthwise separable
        self.convblock3 = nn.Sequential(
            nn.Conv2d(32, 32, kernel_size=(3, 3), padding=1, groups=32, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),  # output_size = 8, RF = 31
            nn.Conv2d(32, 64, kernel_size=(1, 1), bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),
            nn.Conv2d(64, 64, kernel_size=(3, 3), stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),  # output_size = 4, RF = 39
        )
        # TRANSITION BLOCK 3
        self.trans3 = nn.Sequential(nn.Conv2d(64, 32, kernel_size=(1, 1), bias=False))  # output_size = 4
        # C4
        self.convblock4 = nn.Sequential(
            nn.Conv2d(32, 64, kernel_size=(3, 3), padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),  # output_size = 4, RF = 55
            nn.Conv2d(64, 64, kernel_size=(3, 3), padding=1, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),  # output_size = 4, RF = 71
        )
        # OUTPUT BLOCK
        self.gap = nn.Sequential(nn.AvgPool2d(kernel_size=4))  # output_size = 1
        self.fc = nn.Conv2d(64, 10, kernel_size=(1, 1), bias=False)

    def forward(self, x):
        x = self.convblock1(x)
        x = self.trans1(x)
        x = self.convblock2(x)
        x = self.trans2(x)
        x = self.convblock3(x)
        x = self.trans3(x)
        x = self.convblock4(x)
        x = self.gap(x)
        x = self.fc(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


class AEightConvBlockNet(nn.Module):
    """ERA S7 style: eight numbered convblock1..convblock8 (one conv each, convblock6 a depthwise-separable pair)
    with no `blocks` attribute: eight numbered layers, not four blocks. Stride-2 convs, a dilated conv, GAP as
    nn.AvgPool2d(kernel_size=4), 1x1 conv -> view(-1, 10) -> log_softmax.

    RF: 3,5(s2 j2),5(1x1),13(d2),17(s2 j4),25(dw),pw,33(s2 j8),49 = 49. Fails only the blocks rule.
    """

    def __init__(self):
        super().__init__()
        # Input Block
        self.convblock1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(dropout_value)
        )  # output_size = 32, RF = 3
        # CONVOLUTION BLOCK 1
        self.convblock2 = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # output_size = 16, RF = 5
        # TRANSITION BLOCK 1
        self.convblock3 = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False))  # output_size = 16, RF = 5
        # CONVOLUTION BLOCK 2
        self.convblock4 = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # output_size = 16, RF = 13
        self.convblock5 = nn.Sequential(
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # output_size = 8, RF = 17
        self.convblock6 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout(dropout_value),
        )  # output_size = 8, RF = 25
        # CONVOLUTION BLOCK 3
        self.convblock7 = nn.Sequential(
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),
        )  # output_size = 4, RF = 33
        self.convblock8 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout(dropout_value)
        )  # output_size = 4, RF = 49
        # OUTPUT BLOCK
        self.gap = nn.AvgPool2d(kernel_size=4)  # output_size = 1
        self.output_conv = nn.Conv2d(64, 10, 1, bias=False)

    def forward(self, x):
        x = self.convblock1(x)
        x = self.convblock2(x)
        x = self.convblock3(x)
        x = self.convblock4(x)
        x = self.convblock5(x)
        x = self.convblock6(x)
        x = self.convblock7(x)
        x = self.convblock8(x)
        x = self.gap(x)
        x = self.output_conv(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


class AEightBlocksNamedNet(nn.Module):
    """ERA S8 style with eight numbered convblocks where the even ones are 1x1 transitions, and the documented
    `blocks = (...)` attribute naming the four real blocks (convblock1/3/5/7, 9 of the 13 convs). The depthwise
    conv in C3 carries the stride. GAP = nn.AdaptiveAvgPool2d(1), then convblock8 (1x1 to 10), view, log_softmax.

    RF: 3,5 | 1x1 | 7(s2 j2),15(d2) | 1x1 | 19(dw s2 j4),pw,27 | 1x1 | 35(s2 j8),51 = 51. Passes every rule.
    """

    blocks = ("convblock1", "convblock3", "convblock5", "convblock7")

    def __init__(self):
        super().__init__()
        # C1
        self.convblock1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(dropout_value),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32), nn.Dropout(dropout_value),
        )  # output_size = 32, RF = 5
        # T1
        self.convblock2 = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False))  # output_size = 32, RF = 5
        # C2
        self.convblock3 = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 16, RF = 7
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),  # output_size = 16, RF = 15
        )
        # T2
        self.convblock4 = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False))  # output_size = 16, RF = 15
        # C3
        self.convblock5 = nn.Sequential(
            nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), nn.ReLU(), nn.BatchNorm2d(16),
            nn.Conv2d(16, 48, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(48),
            nn.Dropout(dropout_value),  # output_size = 8, RF = 19
            nn.Conv2d(48, 48, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(48),
            nn.Dropout(dropout_value),  # output_size = 8, RF = 27
        )
        # T3
        self.convblock6 = nn.Sequential(nn.Conv2d(48, 32, 1, bias=False))  # output_size = 8, RF = 27
        # C4
        self.convblock7 = nn.Sequential(
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),  # output_size = 4, RF = 35
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),  # output_size = 4, RF = 51
        )
        # OUTPUT BLOCK
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1))  # output_size = 1
        self.convblock8 = nn.Sequential(nn.Conv2d(64, 10, 1, bias=False))

    def forward(self, x):
        x = self.convblock1(x)
        x = self.convblock2(x)
        x = self.convblock3(x)
        x = self.convblock4(x)
        x = self.convblock5(x)
        x = self.convblock6(x)
        x = self.convblock7(x)
        x = self.gap(x)
        x = self.convblock8(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


def _named_block(*layers):
    """An nn.Sequential whose layers keep the names the reference network's forward calls them by."""
    return nn.Sequential(OrderedDict(layers))


class AReferenceNet(nn.Module):
    """The course's reference network: conv1..conv12 inside c1..c4 (named layers, called one by one in a
    functional forward), residual adds inside each block, padding=0 convs shrinking 7 -> 5 -> 3 -> 1, and an
    explicit nn.AdaptiveAvgPool2d(1) on the 1x1 map before view(-1, 10) + log_softmax.

    RF: c1 3,5 (residual body),7(s2 j2) | c2 15(d2),19 (residual body),23(s2 p0 j4, 16->7) |
        c3 31(dw),pw (residual body),39 | c4 47,55,63 (p0: 7->5->3->1) = 63.
    Decision: the GAP on the already-1x1 map counts as the global average pooling (the spec says an explicit
    average op on a 1x1 map still counts), and the RF is that of the 1x1 map fed to it. Passes every rule.
    """

    def __init__(self):
        super().__init__()
        self.c1 = _named_block(
            ("conv1", nn.Conv2d(3, 16, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(16)),
            ("conv2", nn.Conv2d(16, 16, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(16)),
            ("conv3", nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)), ("bn3", nn.BatchNorm2d(32)),
            ("drop", nn.Dropout(dropout_value)),
        )
        self.c2 = _named_block(
            ("conv4", nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False)), ("bn4", nn.BatchNorm2d(32)),
            ("conv5", nn.Conv2d(32, 32, 3, padding=1, bias=False)), ("bn5", nn.BatchNorm2d(32)),
            ("conv6", nn.Conv2d(32, 64, 3, stride=2, padding=0, bias=False)), ("bn6", nn.BatchNorm2d(64)),
            ("drop", nn.Dropout(dropout_value)),
        )
        self.c3 = _named_block(
            ("conv7", nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)), ("bn7", nn.BatchNorm2d(64)),
            ("conv8", nn.Conv2d(64, 64, 1, bias=False)), ("bn8", nn.BatchNorm2d(64)),
            ("conv9", nn.Conv2d(64, 64, 3, padding=1, bias=False)), ("bn9", nn.BatchNorm2d(64)),
            ("drop", nn.Dropout(dropout_value)),
        )
        self.c4 = _named_block(
            ("conv10", nn.Conv2d(64, 64, 3, padding=0, bias=False)), ("bn10", nn.BatchNorm2d(64)),
            ("conv11", nn.Conv2d(64, 64, 3, padding=0, bias=False)), ("bn11", nn.BatchNorm2d(64)),
            ("conv12", nn.Conv2d(64, 10, 3, padding=0, bias=False)),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        c = self.c1
        x = F.relu(c.bn1(c.conv1(x)))  # 32, RF 3
        x = x + F.relu(c.bn2(c.conv2(x)))  # 32, RF 5
        x = c.drop(F.relu(c.bn3(c.conv3(x))))  # 16, RF 7
        c = self.c2
        x = x + F.relu(c.bn5(c.conv5(F.relu(c.bn4(c.conv4(x))))))  # 16, RF 19
        x = c.drop(F.relu(c.bn6(c.conv6(x))))  # 7, RF 23
        c = self.c3
        x = x + F.relu(c.bn8(c.conv8(F.relu(c.bn7(c.conv7(x))))))  # 7, RF 31
        x = c.drop(F.relu(c.bn9(c.conv9(x))))  # 7, RF 39
        c = self.c4
        x = F.relu(c.bn10(c.conv10(x)))  # 5, RF 47
        x = F.relu(c.bn11(c.conv11(x)))  # 3, RF 55
        x = c.conv12(x)  # 1, RF 63
        x = self.gap(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


EXPECTED = {
    "AConvBlockNet": {"receptive_field": 71, "fails": []},
    "AEightConvBlockNet": {"receptive_field": 49, "fails": ["blocks C1 C2 C3 C4"]},
    "AEightBlocksNamedNet": {"receptive_field": 51, "fails": []},
    "AReferenceNet": {"receptive_field": 63, "fails": []},
}
