"""Gallery A, the heads and convolutions students get wrong: max-pooling transitions, a flatten head, a
small AvgPool2d, grouped and dilated 1x1 convolutions, too many parameters, too small a view.
students_a_course.py and students_a_variants.py hold the rest of gallery A.


Classic course styles: `nn.Sequential` convblocks with `# output_size / RF` comments, 1x1 transition blocks,
`x.view(-1, 10)` + `F.log_softmax` outputs, GAP as `nn.AvgPool2d(kernel_size=...)` or `nn.AdaptiveAvgPool2d`,
and the course's reference network (conv1..conv12 inside c1..c4, residual adds, padding=0).

Every class takes N x 3 x 32 x 32 and returns N x 10. Its docstring gives, by hand, the receptive field along
the longest path: rf_out = rf_in + dilation*(kernel-1)*jump_in, jump_out = jump_in*stride, written as
"RF: 3,5,7(s2 j2),..." (one number per conv or pooling window). EXPECTED, at the end, holds the hand verdicts:
the receptive field and exactly the rules that must fail (every other rule must pass).
"""

import torch.nn.functional as F
from torch import nn

dropout_value = 0.05


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


EXPECTED = {
    "AMaxPoolNet": {"receptive_field": 56, "fails": ["no max-pooling"]},
    "AFlattenHeadNet": {"receptive_field": 49, "fails": ["global average pooling before the classifier"]},
    "ASmallAvgPoolNet": {"receptive_field": 63, "fails": ["global average pooling before the classifier"]},
    "AGroupedConvNet": {"receptive_field": 49, "fails": [">= 1 depthwise-separable conv"]},
    "ADilated1x1Net": {"receptive_field": 63, "fails": [">= 1 dilated conv"]},
    "AFatNet": {"receptive_field": 49, "fails": ["parameters < 200,000"]},
    "AShallowRFNet": {"receptive_field": 44, "fails": ["receptive field > 44"]},
}
