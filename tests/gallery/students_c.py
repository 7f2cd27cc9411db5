"""Hold-out gallery C: 14 student-style CIFAR-10 networks for the EVA/ERA S9 rule checker.

Written blind to the checker.  Every network maps N x 3 x 32 x 32 -> N x 10.
Receptive fields are hand-computed with rf += d*(k-1)*jump, jump *= stride over the
longest path to the last feature map before global average pooling.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

DROP = 0.05


def cbr(cin, cout, k=3, s=1, p=None, d=1, g=1):
    if p is None:
        p = d * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


# ---------------------------------------------------------------------------
# C01  convblock1..4 (EVA style), MobileNet separable, GAP -> 1x1 conv -> view -> log_softmax
# RF: 1 -> 3 -> 5 -> 7 (s2, j2) -> 15 (d2) -> 19 (s2, j4) -> 27 (dw) -> 27 (pw) -> 35 (s2, j8)
#     -> 51 -> 67
class C01(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(DROP),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.Dropout(DROP),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.convblock2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
        )
        self.convblock3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.convblock4 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1))
        self.convblock5 = nn.Sequential(nn.Conv2d(64, 10, 1, bias=False))

    def forward(self, x):
        x = self.convblock1(x)
        x = self.convblock2(x)
        x = self.convblock3(x)
        x = self.convblock4(x)
        x = self.gap(x)
        x = self.convblock5(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


# ---------------------------------------------------------------------------
# C02  attributes C1..C4 (upper case), depthwise with depth multiplier 2, dilated depthwise,
#      1x1 conv to 10 channels THEN nn.AvgPool2d(kernel_size=4)
# RF: 1 -> 3 -> 5 | dw(x2) 7 -> pw 7 -> s2 9 (j2) | dil-dw 17 -> pw -> s2 21 (j4)
#     | s2 29 (j8) -> 45 | 1x1 -> 45
class C02(nn.Module):
    def __init__(self):
        super().__init__()
        self.C1 = nn.Sequential(cbr(3, 24), nn.Dropout(DROP), cbr(24, 32))
        self.C2 = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            cbr(64, 64, s=2),
        )
        self.C3 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            cbr(64, 64, s=2),
        )
        self.C4 = nn.Sequential(cbr(64, 64, s=2), cbr(64, 64))
        self.out = nn.Conv2d(64, 10, kernel_size=1, bias=False)
        self.gap = nn.AvgPool2d(kernel_size=4)

    def forward(self, x):
        x = self.C4(self.C3(self.C2(self.C1(x))))
        x = self.out(x)
        x = self.gap(x)
        x = x.view(x.size(0), 10)
        return F.log_softmax(x, dim=1)


# ---------------------------------------------------------------------------
# C03  ModuleDict of four blocks (keys c1..c4), spatial reduction by un-padded dilated convs
#      (no stride, no max-pool), separable with Dropout between dw and pw,
#      F.adaptive_avg_pool2d(x, 1) -> flatten -> Linear
#  (redesigned) c1: 3 -> 5 -> d2 p0 9 (32->28) | c2: dw 11 -> pw -> s2 13 (28->14, j2)
#     | c3: 1x1 -> d2 p0 21 (14->10) -> s2 25 (10->5, j4) | c4: d2 41 -> 49
class C03(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict({
            "c1": nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32, p=0, d=2)),
            "c2": nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Dropout(DROP),
                nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                cbr(64, 64, s=2),
            ),
            "c3": nn.Sequential(cbr(64, 32, k=1), cbr(32, 64, p=0, d=2), cbr(64, 64, s=2)),
            "c4": nn.Sequential(cbr(64, 64, d=2), cbr(64, 64)),
        })
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        for name in ("c1", "c2", "c3", "c4"):
            x = self.layers[name](x)
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return F.log_softmax(self.fc(x), dim=1)


# ---------------------------------------------------------------------------
# C04  one nn.Sequential of four stages (self.features), x.mean((2, 3)) head, raw logits
# RF: stage1: 3 -> 5 -> 7 (s2, j2) | stage2: dw 11 -> pw -> s2 15 (j4)
#     | stage3: d2 31 -> s2 39 (j8) | stage4: 55 -> 1x1 55
class C04(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32, s=2)),
            nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
                cbr(48, 48, s=2),
            ),
            nn.Sequential(cbr(48, 64, d=2), cbr(64, 64, s=2)),
            nn.Sequential(cbr(64, 64), cbr(64, 96, k=1)),
        )
        self.classifier = nn.Linear(96, 10)

    def forward(self, x):
        x = self.features(x)
        x = x.mean((2, 3))
        return self.classifier(x)


# ---------------------------------------------------------------------------
# C05  blocks named only through the class attribute `blocks = (...)`, functional forward,
#      nn.AdaptiveAvgPool2d -> nn.Linear
# RF: prep 3 -> 5 | layer1: s2 7 (j2) -> d2 15 | layer2: s2 19 (j4) -> dw 27 -> pw
#     | layer3: s2 35 (j8) -> 51
class C05(nn.Module):
    blocks = ("prep", "layer1", "layer2", "layer3")

    def __init__(self):
        super().__init__()
        self.prep = nn.Sequential(cbr(3, 16), cbr(16, 32))
        self.layer1 = nn.Sequential(cbr(32, 32, s=2), cbr(32, 48, d=2))
        self.layer2 = nn.Sequential(
            cbr(48, 64, s=2),
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU(),
        )
        self.layer3 = nn.Sequential(cbr(96, 64, s=2), cbr(64, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = self.prep(x)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.pool(out)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return F.log_softmax(out, dim=-1)


# ---------------------------------------------------------------------------
# C06  FAIL: max-pool transitions (S7-style network "converted" to S9)
# RF: 3 -> 5 -> mp 6 (j2) | d2 14 -> 18 -> mp 20 (j4) | dw 28 -> pw -> mp 32 (j8)
#     | 48 -> 64
class C06(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cbr(3, 16), cbr(16, 32), nn.MaxPool2d(2, 2))
        self.c2 = nn.Sequential(cbr(32, 32, d=2), cbr(32, 48), nn.MaxPool2d(2, 2))
        self.c3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.c4 = nn.Sequential(cbr(64, 64), cbr(64, 64))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = self.fc(self.gap(x))
        return F.log_softmax(x.view(-1, 10), dim=-1)


# ---------------------------------------------------------------------------
# C07  FAIL: flatten head, no global pooling (4x4x32 -> Linear)
# RF: 3 -> 5 -> s2 7 (j2) | d2 15 -> s2 19 (j4) | dw 27 -> pw -> s2 35 (j8) | 51 -> 1x1 51
class C07(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32, s=2))
        self.c2 = nn.Sequential(cbr(32, 32, d=2), cbr(32, 48, s=2))
        self.c3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            cbr(64, 64, s=2),
        )
        self.c4 = nn.Sequential(cbr(64, 64), cbr(64, 32, k=1))
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.fc(x), dim=1)


# ---------------------------------------------------------------------------
# C08  FAIL: "separable" is a grouped conv (groups=4, not depthwise) followed by a 1x1
# RF: as C07 up to 35 (j8), then two 3x3: 51 -> 67
class C08(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32, s=2))
        self.c2 = nn.Sequential(cbr(32, 32, d=2), cbr(32, 48, s=2))
        self.c3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            cbr(64, 64, s=2),
        )
        self.c4 = nn.Sequential(cbr(64, 64), cbr(64, 64))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = self.gap(x).squeeze(-1).squeeze(-1)
        return self.fc(x)


# ---------------------------------------------------------------------------
# C09  FAIL: the only "dilated" conv is a 1x1 with dilation=2 (no effect)
# RF: 3 -> 5 -> s2 7 (j2) -> 11 -> 1x1(d2) 11 -> s2 15 (j4) | dw 23 -> pw -> s2 31 (j8)
#     | 47 -> 63
class C09(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32, s=2))
        self.c2 = nn.Sequential(cbr(32, 32), cbr(32, 48, k=1, d=2, p=0), cbr(48, 48, s=2))
        self.c3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            cbr(64, 64, s=2),
        )
        self.c4 = nn.Sequential(cbr(64, 64), cbr(64, 64))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = self.gap(x).flatten(1)
        return F.log_softmax(self.fc(x), dim=1)


# ---------------------------------------------------------------------------
# C10  FAIL: too many parameters (128-channel blocks)
# RF: as C08 -> 67
class C10(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cbr(3, 32), cbr(32, 64), cbr(64, 64, s=2))
        self.c2 = nn.Sequential(cbr(64, 64, d=2), cbr(64, 128, s=2))
        self.c3 = nn.Sequential(
            nn.Conv2d(128, 128, 3, padding=1, groups=128, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            cbr(128, 128, s=2),
        )
        self.c4 = nn.Sequential(cbr(128, 128), cbr(128, 128))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = torch.flatten(self.gap(x), 1)
        return F.log_softmax(self.fc(x), dim=1)


# ---------------------------------------------------------------------------
# C11  FAIL: receptive field too small (stride 1 everywhere, 1x1 transitions)
# RF: 3 -> 5 -> 1x1 | d2 9 -> 1x1 | dw 11 -> pw | 13 -> 1x1 -> 13
class C11(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 16, k=1))
        self.c2 = nn.Sequential(cbr(16, 32, d=2), cbr(32, 16, k=1))
        self.c3 = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.c4 = nn.Sequential(cbr(32, 32), cbr(32, 10, k=1))
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        x = self.gap(x)
        return F.log_softmax(x.view(-1, 10), dim=-1)


# ---------------------------------------------------------------------------
# C12  FAIL: GroupNorm everywhere instead of BatchNorm (S8-style norm experiment)
# RF: as C08 -> 67
def cgr(cin, cout, k=3, s=1, d=1, g=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=s, padding=d * (k // 2), dilation=d, groups=g, bias=False),
        nn.GroupNorm(4, cout),
        nn.ReLU(),
    )


class C12(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(cgr(3, 16), cgr(16, 32), cgr(32, 32, s=2))
        self.c2 = nn.Sequential(cgr(32, 32, d=2), cgr(32, 48, s=2))
        self.c3 = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False),  # depthwise
            nn.Conv2d(48, 64, 1, bias=False),                        # pointwise
            nn.GroupNorm(4, 64), nn.ReLU(),
            cgr(64, 64, s=2),
        )
        self.c4 = nn.Sequential(cgr(64, 64), cgr(64, 64))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        return self.fc(self.gap(x).view(x.size(0), -1))


# ---------------------------------------------------------------------------
# C13  residual blocks (x + block(x)), the only dilated conv is a dilated DEPTHWISE conv of a
#      MobileNet separable; blocks named block1..block4 through a `blocks` list attribute;
#      1x1 conv to 10 channels then x.mean(dim=(-2, -1)) then log_softmax
# RF (longest path = through the residual branches):
#   block1: 3 -> 5 -> s2 7 (j2) | block2: res[11 -> 15] -> s2 19 (j4)
#   block3: res[dil-dw d2 35 -> pw] -> s2 43 (j8) | block4: res[59 -> 75] -> 1x1 10ch 75
class _Res(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class C13(nn.Module):
    blocks = ["block1", "block2", "block3", "block4"]

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32, s=2))
        self.block2 = nn.Sequential(_Res(nn.Sequential(cbr(32, 32), cbr(32, 32))), cbr(32, 48, s=2))
        self.block3 = nn.Sequential(
            _Res(nn.Sequential(
                nn.Conv2d(48, 48, 3, padding=2, dilation=2, groups=48, bias=False),
                nn.BatchNorm2d(48), nn.ReLU(),
                nn.Conv2d(48, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            )),
            cbr(48, 64, s=2),
        )
        self.block4 = nn.Sequential(_Res(nn.Sequential(cbr(64, 64), cbr(64, 64))))
        self.head = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        x = self.block4(x)
        x = self.head(x)
        x = x.mean(dim=(-2, -1))
        return F.log_softmax(x, dim=-1)


# ---------------------------------------------------------------------------
# C14  FAIL (edge): receptive field exactly 44 (rule is strictly > 44).  A function that returns
#      nn.Sequential(OrderedDict) with stages "C1".."C4"; nn.AvgPool2d(2) transitions (these are
#      NOT global pooling: 32->16->8->4), then AdaptiveAvgPool2d -> Flatten -> Linear
# RF: C1: 3 -> 5 -> avg2 6 (j2) | C2: d2 14 -> 18 -> 22 -> avg2 24 (j4)
#     | C3: dw 32 -> pw -> 40 -> avg2 44 (j8) | C4: 1x1 -> 1x1 -> 44
def C14():
    return nn.Sequential(OrderedDict([
        ("C1", nn.Sequential(cbr(3, 16), cbr(16, 32), nn.AvgPool2d(2, 2))),
        ("C2", nn.Sequential(cbr(32, 32, d=2), cbr(32, 48), cbr(48, 48), nn.AvgPool2d(2, 2))),
        ("C3", nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            cbr(64, 64), nn.AvgPool2d(2, 2),
        )),
        ("C4", nn.Sequential(cbr(64, 96, k=1), cbr(96, 64, k=1))),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(64, 10)),
    ]))


# ---------------------------------------------------------------------------
_ALL = ["parameters < 200,000", "no max-pooling", ">= 1 depthwise-separable conv", ">= 1 dilated conv",
        "global average pooling before the classifier", "BatchNorm", "blocks C1 C2 C3 C4",
        "receptive field > 44"]

EXPECTED = {
    "C01": {"receptive_field": 67, "fails": []},
    "C02": {"receptive_field": 45, "fails": []},
    "C03": {"receptive_field": 49, "fails": []},
    "C04": {"receptive_field": 55, "fails": []},
    "C05": {"receptive_field": 51, "fails": []},
    "C06": {"receptive_field": 64, "fails": ["no max-pooling"]},
    "C07": {"receptive_field": 51, "fails": ["global average pooling before the classifier"]},
    "C08": {"receptive_field": 67, "fails": [">= 1 depthwise-separable conv"]},
    "C09": {"receptive_field": 63, "fails": [">= 1 dilated conv"]},
    "C10": {"receptive_field": 67, "fails": ["parameters < 200,000"]},
    "C11": {"receptive_field": 13, "fails": ["receptive field > 44"]},
    "C12": {"receptive_field": 67, "fails": ["BatchNorm"]},
    "C13": {"receptive_field": 75, "fails": []},
    "C14": {"receptive_field": 44, "fails": ["receptive field > 44"]},
}
