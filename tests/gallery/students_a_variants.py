"""Gallery A, the variants: GroupNorm, MobileNet stages, dilated downsampling, three blocks, depthwise then
3x3, a ModuleList, residual layers, global max-pooling. students_a_course.py and students_a_heads.py
hold the rest of gallery A.


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
    "AGroupNormNet": {"receptive_field": 49, "fails": ["BatchNorm", "blocks C1 C2 C3 C4"]},
    "AMobileNetNet": {"receptive_field": 55, "fails": []},
    "ADilatedDownsampleNet": {"receptive_field": 45, "fails": []},
    "AThreeBlockNet": {"receptive_field": 33, "fails": ["blocks C1 C2 C3 C4", "receptive field > 44"]},
    "ADepthwiseThen3x3Net": {"receptive_field": 57, "fails": [">= 1 depthwise-separable conv"]},
    "AModuleListNet": {"receptive_field": 51, "fails": []},
    "AResidualLayerNet": {"receptive_field": 59, "fails": []},
    "AGlobalMaxPoolNet": {"receptive_field": 49,
                          "fails": ["no max-pooling", "global average pooling before the classifier"]},
}
