"""Gallery A: CIFAR-10 networks written the way "advanced convolutions" course students write them.

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


class AMaxPoolNet(nn.Module):
    """ERA S6/S7 style: conv_block1..4 with transition1..3 = MaxPool2d(2, 2) + 1x1 conv between them (the
    "MaxPooling at RF ~5-7" recipe). Has a dilated conv and a depthwise-separable conv; GAP as
    nn.AvgPool2d(kernel_size=4) after a 1x1 conv to 10 channels.

    RF: 3,5 | 6(mp +1*1, j2) | 10,18(d2) | 20(mp +1*2, j4) | 28(dw),pw,36 | 40(mp +1*4, j8) | 56,1x1 = 56.
    Fails only "no max-pooling" (receptive field not checked by gradient: max-pooling).
    """

    def __init__(self):
        super().__init__()
        self.conv_block1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(dropout_value),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32), nn.Dropout(dropout_value),
        )  # output_size = 32, RF = 5
        self.transition1 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(32, 16, 1, bias=False))  # 16, RF 6
        self.conv_block2 = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32), nn.Dropout(dropout_value),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # output_size = 16, RF = 18
        self.transition2 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(32, 32, 1, bias=False))  # 8, RF 20
        self.conv_block3 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout(dropout_value),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout(dropout_value),
        )  # output_size = 8, RF = 36
        self.transition3 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(64, 32, 1, bias=False))  # 4, RF 40
        self.conv_block4 = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout(dropout_value),
            nn.Conv2d(64, 10, 1, bias=False),
        )  # output_size = 4, RF = 56
        self.gap = nn.Sequential(nn.AvgPool2d(kernel_size=4))

    def forward(self, x):
        x = self.transition1(self.conv_block1(x))
        x = self.transition2(self.conv_block2(x))
        x = self.transition3(self.conv_block3(x))
        x = self.conv_block4(x)
        x = self.gap(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


class AFlattenHeadNet(nn.Module):
    """layer1..4 with stride-2 convs, a dilated conv and a depthwise-separable conv, but the classic
    "flatten the 4x4 map into a linear layer" head (16*4*4 -> 10): no global average pooling.

    RF: 3,5(s2 j2) | 13(d2),17(s2 j4) | 25(dw),pw | 33(s2 j8),49 = 49 (the 4x4 map that is flattened).
    Fails only the GAP rule.
    """

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Dropout(0.1),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU(), nn.Dropout(0.1),
        )
        self.layer3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.Dropout(0.1),
        )
        self.layer4 = nn.Sequential(
            nn.Conv2d(64, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return F.log_softmax(x, dim=1)


class ASmallAvgPoolNet(nn.Module):
    """C1..C4 (upper case), stride-2 convs, dilated and depthwise-separable convs, but the "GAP" is
    nn.AvgPool2d(kernel_size=4) on an 8x8 map: it leaves a 2x2 map that is flattened into a linear layer.

    RF: 3,5,7(s2 j2) | 15(d2),19(s2 j4) | 27(dw),pw,35 | 43,51 | 63(avgpool k4 s4: +3*4, j16) = 63.
    Decision: no global pooling exists, so the RF is the largest of any feature map, which is the 2x2 pooled
    map the classifier reads; the non-global AvgPool2d window counts like a convolution (rule 8). Without the
    pool the last conv map has RF 51; both are > 44, so the RF verdict passes either way. Fails only the GAP rule.
    """

    def __init__(self):
        super().__init__()
        self.C1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # 16, RF 7
        self.C2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # 8, RF 19
        self.C3 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),
        )  # 8, RF 35
        self.C4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Conv2d(64, 32, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
        )  # 8, RF 51
        self.pool = nn.AvgPool2d(kernel_size=4)  # 2, RF 63
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = self.C4(self.C3(self.C2(self.C1(x))))
        x = self.pool(x)
        x = x.view(-1, 32 * 2 * 2)
        return F.log_softmax(self.fc(x), dim=-1)


class AGroupedConvNet(nn.Module):
    """convblock1..4; the student's "depthwise" conv uses groups=2 (64 channels), followed by BN/ReLU and a 1x1:
    a grouped conv, not a depthwise one. Head: F.adaptive_avg_pool2d(x, 1) -> view -> Linear -> log_softmax.

    RF: 3,5(s2 j2) | 13(d2),17(s2 j4) | 25(g2),1x1 | 33(s2 j8),49 = 49.
    Fails only ">= 1 depthwise-separable conv".
    """

    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Dropout(dropout_value),
        )  # 16, RF 5
        self.convblock2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Dropout(dropout_value),
        )  # 8, RF 17
        self.convblock3 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.Dropout(dropout_value),
        )  # 8, RF 25
        self.convblock4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )  # 4, RF 49
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.convblock1(x)
        x = self.convblock2(x)
        x = self.convblock3(x)
        x = self.convblock4(x)
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.view(-1, 64)
        x = self.fc(x)
        return F.log_softmax(x, dim=-1)


class ADilated1x1Net(nn.Module):
    """c1..c4 kept in an nn.ModuleDict and run in a loop; the only dilation=2 is on a 1x1 transition conv
    (it changes nothing). Depthwise-separable in c3; nn.AdaptiveAvgPool2d(1) -> flatten -> Linear.

    RF: 3,5,5(1x1 d2) | 7(s2 j2),11,15(s2 j4) | 23(dw),pw,31(s2 j8) | 47,63 = 63.
    Fails only ">= 1 dilated conv".
    """

    def __init__(self):
        super().__init__()
        self.net = nn.ModuleDict({
            "c1": nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 16, 1, dilation=2, bias=False),
            ),
            "c2": nn.Sequential(
                nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Dropout(dropout_value),
            ),
            "c3": nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Dropout(dropout_value),
            ),
            "c4": nn.Sequential(
                nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            ),
        })
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        for name in ("c1", "c2", "c3", "c4"):
            x = self.net[name](x)
        x = self.gap(x)
        x = x.flatten(1)
        return F.log_softmax(self.fc(x), dim=-1)


class AFatNet(nn.Module):
    """block1..4, a width-heavy student network (128 channels from C2 on) that overshoots the parameter budget.
    Dilated and depthwise-separable convs, nn.AdaptiveAvgPool2d((1, 1)) -> nn.Flatten -> Linear.

    RF: 3,5(s2 j2) | 13(d2),17(s2 j4) | 25(dw),pw | 33(s2 j8),49 = 49. About 260k parameters.
    Fails only "parameters < 200,000".
    """

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Dropout(0.1),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Dropout(0.1),
        )
        self.block3 = nn.Sequential(
            nn.Conv2d(128, 128, 3, padding=1, groups=128, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.Dropout(0.1),
        )
        self.block4 = nn.Sequential(
            nn.Conv2d(128, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(x)


class AShallowRFNet(nn.Module):
    """stage1..4 that downsample with nn.AvgPool2d(2) (average pooling is allowed), dilated and
    depthwise-separable convs, head 1x1 conv to 10 -> nn.AdaptiveAvgPool2d(1) -> view(-1, 10) -> log_softmax.
    The receptive field lands exactly on the threshold.

    RF: 3,5,6(ap2 j2) | 10,18(d2),20(ap2 j4) | 28(dw),pw | 36,44 = 44, not > 44.
    Fails only "receptive field > 44".
    """

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AvgPool2d(2),
        )  # 16, RF 6
        self.stage2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AvgPool2d(2), nn.Dropout(dropout_value),
        )  # 8, RF 20
        self.stage3 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.Dropout(dropout_value),
        )  # 8, RF 28
        self.stage4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )  # 8, RF 44
        self.classifier = nn.Conv2d(64, 10, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.gap(self.classifier(x))
        return F.log_softmax(x.view(-1, 10), dim=-1)


class AGroupNormNet(nn.Module):
    """Functional forward, F.relu(self.gn1(self.conv1(x))) style, with GroupNorm instead of BatchNorm (the
    S8 "normalization experiments" assignment) and bare conv1..conv9 attributes: no four blocks anywhere.
    Head: 1x1 conv9 to 10 -> x.mean([-1, -2], keepdim=True) -> view(-1, 10) -> log_softmax.

    RF: 3,5(s2 j2),13(d2),17(s2 j4),25(dw),pw,33(s2 j8),49 = 49.
    Decision: only a ReLU sits between the depthwise conv5 and the pointwise conv6, because GroupNorm mixes
    positions (it is not one of the spec's per-pixel layers) and would put the depthwise verdict in doubt.
    Fails "BatchNorm" and "blocks C1 C2 C3 C4".
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(4, 32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False)
        self.gn3 = nn.GroupNorm(4, 32)
        self.conv4 = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
        self.gn4 = nn.GroupNorm(4, 64)
        self.conv5 = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
        self.conv6 = nn.Conv2d(64, 64, 1, bias=False)
        self.gn6 = nn.GroupNorm(4, 64)
        self.conv7 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.gn7 = nn.GroupNorm(4, 64)
        self.conv8 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.gn8 = nn.GroupNorm(4, 64)
        self.conv9 = nn.Conv2d(64, 10, 1, bias=False)
        self.dropout = nn.Dropout(dropout_value)

    def forward(self, x):
        x = F.relu(self.gn1(self.conv1(x)))  # 32, RF 3
        x = self.dropout(F.relu(self.gn2(self.conv2(x))))  # 16, RF 5
        x = F.relu(self.gn3(self.conv3(x)))  # 16, RF 13
        x = self.dropout(F.relu(self.gn4(self.conv4(x))))  # 8, RF 17
        x = F.relu(self.conv5(x))  # 8, RF 25 (no norm between depthwise and pointwise)
        x = self.dropout(F.relu(self.gn6(self.conv6(x))))  # 8, RF 25
        x = F.relu(self.gn7(self.conv7(x)))  # 4, RF 33
        x = F.relu(self.gn8(self.conv8(x)))  # 4, RF 49
        x = self.conv9(x)
        x = x.mean([-1, -2], keepdim=True)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


def _dw_separable(cin, cout, stride=1, dilation=1):
    """MobileNet unit: depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""
    return [
        nn.Conv2d(cin, cin, 3, stride=stride, padding=dilation, dilation=dilation, groups=cin, bias=False),
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    ]


class AMobileNetNet(nn.Module):
    """MobileNet-style: self.features = nn.Sequential of four unnamed stages built from depthwise-separable
    units (BN/ReLU between depthwise and pointwise), one of them a dilated depthwise conv. Head:
    x.mean((2, 3)) -> Dropout -> Linear (logits).

    RF: 3,5 | 7(s2 j2),11 | 15(s2 j4),31(dw d2) | 39(s2 j8),55 = 55. Passes every rule.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                *_dw_separable(32, 32),
            ),  # 32, RF 5
            nn.Sequential(*_dw_separable(32, 64, stride=2), *_dw_separable(64, 64)),  # 16, RF 11
            nn.Sequential(*_dw_separable(64, 128, stride=2), *_dw_separable(128, 128, dilation=2)),  # 8, RF 31
            nn.Sequential(*_dw_separable(128, 128, stride=2), *_dw_separable(128, 128)),  # 4, RF 55
        )
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(128, 10)

    def forward(self, x):
        x = self.features(x)
        x = x.mean((2, 3))
        return self.classifier(self.dropout(x))


class ADilatedDownsampleNet(nn.Module):
    """No stride anywhere: padding=0 dilated convs shrink the map instead (32 -> 28 -> 20 -> 12 -> 4), as in the
    "use dilated kernels instead of MaxPooling or strided convolution" bonus. Blocks live in an nn.ModuleDict
    `body` and are named by the documented `blocks` attribute with dotted paths. A dilated depthwise-separable
    conv in the third block. Head: 1x1 conv to 10 -> nn.AdaptiveAvgPool2d(1) -> view(-1, 10) -> log_softmax.

    RF (jump stays 1): 3,7(d2 p0) | 9,17(d4 p0) | 21(dw d2),pw,29(d4 p0) | 37(d4),45(d4 p0) = 45, just > 44.
    Passes every rule.
    """

    blocks = ("body.prep", "body.dilate1", "body.dilate2", "body.dilate3")

    def __init__(self):
        super().__init__()
        self.body = nn.ModuleDict({
            "prep": nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16),  # 32, RF 3
                nn.Conv2d(16, 32, 3, padding=0, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),  # 28, RF 7
            ),
            "dilate1": nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),  # 28, RF 9
                nn.Conv2d(32, 32, 3, padding=0, dilation=4, bias=False), nn.ReLU(), nn.BatchNorm2d(32),  # 20, RF 17
                nn.Dropout(dropout_value),
            ),
            "dilate2": nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32, bias=False), nn.ReLU(),
                nn.BatchNorm2d(32),  # 20, RF 21
                nn.Conv2d(32, 48, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(48),
                nn.Conv2d(48, 48, 3, padding=0, dilation=4, bias=False), nn.ReLU(), nn.BatchNorm2d(48),  # 12, RF 29
                nn.Dropout(dropout_value),
            ),
            "dilate3": nn.Sequential(
                nn.Conv2d(48, 48, 3, padding=4, dilation=4, bias=False), nn.ReLU(), nn.BatchNorm2d(48),  # 12, RF 37
                nn.Conv2d(48, 48, 3, padding=0, dilation=4, bias=False), nn.ReLU(), nn.BatchNorm2d(48),  # 4, RF 45
            ),
        })
        self.out = nn.Conv2d(48, 10, 1, bias=False)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        for name in ("prep", "dilate1", "dilate2", "dilate3"):
            x = self.body[name](x)
        x = self.gap(self.out(x))
        return F.log_softmax(x.view(-1, 10), dim=-1)


class AThreeBlockNet(nn.Module):
    """Only three blocks c1..c3 (plus a bare 1x1 output conv), GAP written as F.avg_pool2d(x, x.shape[-1]).
    Dilated and depthwise-separable convs; too shallow for the receptive field target.

    RF: 3,5(s2 j2) | 13(d2),17(s2 j4) | 25(dw),pw,33 = 33.
    Fails "blocks C1 C2 C3 C4" and "receptive field > 44".
    """

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # 16, RF 5
        self.c2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),
        )  # 8, RF 17
        self.c3 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
        )  # 8, RF 33
        self.out_conv = nn.Conv2d(64, 10, 1, bias=False)

    def forward(self, x):
        x = self.c3(self.c2(self.c1(x)))
        x = self.out_conv(x)
        x = F.avg_pool2d(x, x.shape[-1])
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


class ADepthwiseThen3x3Net(nn.Module):
    """The network itself has exactly four container children (entry, middle, deep, exit) plus a GAP and a
    bare 1x1 output conv. The student's "depthwise separable" conv is a depthwise 3x3 followed by BN/ReLU and
    another 3x3 conv, not a pointwise one. Head: nn.AdaptiveAvgPool2d(1) -> 1x1 conv -> view -> log_softmax.

    RF: 3,5(s2 j2) | 13(d2),17(s2 j4) | 25(dw),33 | 41(s2 j8),57 = 57.
    Fails only ">= 1 depthwise-separable conv".
    """

    def __init__(self):
        super().__init__()
        self.entry = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )  # 16, RF 5
        self.middle = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Dropout(dropout_value),
        )  # 8, RF 17
        self.deep = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Dropout(dropout_value),
        )  # 8, RF 33
        self.exit = nn.Sequential(
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )  # 4, RF 57
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.conv_out = nn.Conv2d(64, 10, 1, bias=False)

    def forward(self, x):
        x = self.exit(self.deep(self.middle(self.entry(x))))
        x = self.conv_out(self.gap(x))
        return F.log_softmax(x.view(-1, 10), dim=-1)


class AModuleListNet(nn.Module):
    """Four stages kept in an nn.ModuleList and run in a loop; a dilated depthwise conv followed (through
    BN/ReLU) by its pointwise conv. Head: x.view(n, c, -1).mean(-1) -> Linear (logits).

    RF: 3,5,7(s2 j2) | 15(dw d2),pw,19(s2 j4) | 27,35(s2 j8) | 51 = 51. Passes every rule.
    """

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                nn.Conv2d(24, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Dropout(dropout_value),
            ),  # 16, RF 7
            nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
                nn.Conv2d(48, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
                nn.Dropout(dropout_value),
            ),  # 8, RF 19
            nn.Sequential(
                nn.Conv2d(48, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Dropout(dropout_value),
            ),  # 4, RF 35
            nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()),  # 4, RF 51
        ])
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        for stage in self.convs:
            x = stage(x)
        n, c = x.shape[:2]
        x = x.view(n, c, -1).mean(-1)
        return self.fc(x)


class AResidualLayerNet(nn.Module):
    """ERA S10 custom-ResNet style: prep layer, layer1..4, residual branches res1/res2 added in the forward
    (x = x + self.res1(x)), GAP written as x.sum((2, 3)) / (h * w), then Linear and log_softmax.

    RF: prep 3 | layer1 5,7(s2 j2) | res1 11,15 | layer2 23(d2),27(s2 j4) | layer3 35(dw),pw |
        res2 43,51 | layer4 59(s2 j8) = 59. Passes every rule.
    """

    def __init__(self):
        super().__init__()
        self.prep = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.res1 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(32, 48, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Dropout(dropout_value),
        )
        self.layer3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.res2 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.layer4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Dropout(dropout_value),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.prep(x)
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = x + self.res2(x)
        x = self.layer4(x)
        x = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
        x = self.fc(x)
        return F.log_softmax(x, dim=1)


class AGlobalMaxPoolNet(nn.Module):
    """Classic convblock1..4 network whose "GAP" is nn.AdaptiveMaxPool2d(1): a global MAX pooling, which is
    both max-pooling and not an average. Then a 1x1 conv to 10, view(-1, 10), log_softmax.

    RF: 3,5(s2 j2) | 13(d2),17(s2 j4) | 25(dw),pw | 33(s2 j8),49 = 49 (the map entering the global max pool).
    The output 1x1 conv is `output_block`, not `convblock5`: a convblock5 would break the blocks rule too.
    Decision: the global max pool is the network's global pooling, so its window is not added to the RF
    (counted as a pooling window it would give 49 + 3*8 = 73; > 44 either way).
    Fails "no max-pooling" and "global average pooling before the classifier".
    """

    def __init__(self):
        super().__init__()
        # CONVOLUTION BLOCK 1
        self.convblock1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(dropout_value),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # output_size = 16, RF = 5
        # CONVOLUTION BLOCK 2
        self.convblock2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Dropout(dropout_value),
        )  # output_size = 8, RF = 17
        # CONVOLUTION BLOCK 3
        self.convblock3 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout(dropout_value),
        )  # output_size = 8, RF = 25
        # CONVOLUTION BLOCK 4
        self.convblock4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Dropout(dropout_value),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(64),
        )  # output_size = 4, RF = 49
        # OUTPUT BLOCK
        self.gap = nn.Sequential(nn.AdaptiveMaxPool2d(1))
        self.output_block = nn.Sequential(nn.Conv2d(64, 10, 1, bias=False))

    def forward(self, x):
        x = self.convblock1(x)
        x = self.convblock2(x)
        x = self.convblock3(x)
        x = self.convblock4(x)
        x = self.gap(x)
        x = self.output_block(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


EXPECTED = {
    "AConvBlockNet": {"receptive_field": 71, "fails": []},
    "AEightConvBlockNet": {"receptive_field": 49, "fails": ["blocks C1 C2 C3 C4"]},
    "AEightBlocksNamedNet": {"receptive_field": 51, "fails": []},
    "AReferenceNet": {"receptive_field": 63, "fails": []},
    "AMaxPoolNet": {"receptive_field": 56, "fails": ["no max-pooling"]},
    "AFlattenHeadNet": {"receptive_field": 49, "fails": ["global average pooling before the classifier"]},
    "ASmallAvgPoolNet": {"receptive_field": 63, "fails": ["global average pooling before the classifier"]},
    "AGroupedConvNet": {"receptive_field": 49, "fails": [">= 1 depthwise-separable conv"]},
    "ADilated1x1Net": {"receptive_field": 63, "fails": [">= 1 dilated conv"]},
    "AFatNet": {"receptive_field": 49, "fails": ["parameters < 200,000"]},
    "AShallowRFNet": {"receptive_field": 44, "fails": ["receptive field > 44"]},
    "AGroupNormNet": {"receptive_field": 49, "fails": ["BatchNorm", "blocks C1 C2 C3 C4"]},
    "AMobileNetNet": {"receptive_field": 55, "fails": []},
    "ADilatedDownsampleNet": {"receptive_field": 45, "fails": []},
    "AThreeBlockNet": {"receptive_field": 33, "fails": ["blocks C1 C2 C3 C4", "receptive field > 44"]},
    "ADepthwiseThen3x3Net": {"receptive_field": 57, "fails": [">= 1 depthwise-separable conv"]},
    "AModuleListNet": {"receptive_field": 51, "fails": []},
    "AResidualLayerNet": {"receptive_field": 59, "fails": []},
    "AGlobalMaxPoolNet": {
        "receptive_field": 49,
        "fails": ["no max-pooling", "global average pooling before the classifier"],
    },
}
