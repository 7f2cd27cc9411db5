"""Gallery B, its building parts and the networks that pass every rule. students_b_failing.py holds those
that fail one or more.


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


import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------
# Building parts (not networks): each starts with "B" so the gallery's names never clash with another gallery's.
# ---------------------------------------------------------------------------------------------------------------


class BPartFunctionalSep(nn.Module):
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU, written with F.conv2d on nn.Parameter weights."""

    def __init__(self, cin, cout, stride=1, dilation=1):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        self.dw_weight = nn.Parameter(torch.randn(cin, 1, 3, 3) * (2.0 / 9) ** 0.5)
        self.pw_weight = nn.Parameter(torch.randn(cout, cin, 1, 1) * (2.0 / cin) ** 0.5)
        self.bn_dw = nn.BatchNorm2d(cin)
        self.bn_pw = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.conv2d(x, self.dw_weight, stride=self.stride, padding=self.dilation, dilation=self.dilation,
                     groups=x.shape[1])
        x = F.relu(self.bn_dw(x))
        x = F.conv2d(x, self.pw_weight)
        return F.relu(self.bn_pw(x))


def b_dw_pw(cin, cout, stride=1, dilation=1, multiplier=1, act=nn.ReLU):
    """MobileNet unit as an nn.Sequential: depthwise (optionally with a depth multiplier) -> BN -> act -> 1x1."""
    mid = cin * multiplier
    return nn.Sequential(
        nn.Conv2d(cin, mid, 3, stride=stride, padding=dilation, dilation=dilation, groups=cin, bias=False),
        nn.BatchNorm2d(mid),
        act(),
        nn.Conv2d(mid, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


def b_conv_bn(cin, cout, kernel=3, stride=1, padding=1, dilation=1, act=nn.ReLU, drop=0.0):
    """The course's convblock: conv -> BN -> activation (-> dropout)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
              nn.BatchNorm2d(cout), act()]
    if drop:
        layers.append(nn.Dropout(drop))
    return nn.Sequential(*layers)


class BPartSqueezeExcite(nn.Module):
    """Squeeze-excitation side branch: channel gate from a global average, multiplied back onto the map."""

    def __init__(self, channels, reduction=4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.expand(F.silu(self.reduce(gate))))
        return x * gate


class BPartResidualSep(nn.Module):
    """x + (depthwise -> BN -> SiLU -> pointwise -> BN -> SiLU): the add comes after the pointwise."""

    def __init__(self, channels, dilation=1):
        super().__init__()
        self.body = b_dw_pw(channels, channels, dilation=dilation, act=nn.SiLU)

    def forward(self, x):
        return x + self.body(x)


class BPartDepthwiseResidual(nn.Module):
    """relu(x + BN(depthwise(x))): a residual add right after the depthwise conv (before any pointwise)."""

    def __init__(self, channels, dilation=1):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn(self.dw(x)))


class BPartDilatedPointwise(nn.Module):
    """A 1x1 transition conv written with F.conv2d and dilation=2 (which changes nothing on a 1x1 kernel)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 1, 1) * (2.0 / cin) ** 0.5)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(F.conv2d(x, self.weight, dilation=2)))


# ---------------------------------------------------------------------------------------------------------------
# Networks that pass every rule
# ---------------------------------------------------------------------------------------------------------------


class BFunctionalNet(nn.Module):
    """Functional style: custom depthwise-separable modules on nn.Parameter weights, blocks c1..c4, x.mean((2, 3)).

    RF: stem 3; c1 dw 5; c2 dw s2 7 (j2), dw 11; c3 dw d2 11+2*2*2=19, dw s2 23 (j4); c4 dw d2 23+2*2*4=39,
    dw 47 = 47. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                BPartFunctionalSep(16, 32))
        self.c2 = nn.Sequential(BPartFunctionalSep(32, 32, stride=2), BPartFunctionalSep(32, 48))
        self.c3 = nn.Sequential(BPartFunctionalSep(48, 64, dilation=2), BPartFunctionalSep(64, 64, stride=2))
        self.c4 = nn.Sequential(BPartFunctionalSep(64, 96, dilation=2), BPartFunctionalSep(96, 96))
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        return self.fc(x.mean((2, 3)))


class BMobileNetV1(nn.Module):
    """MobileNet-V1 style: `features` = nn.Sequential of four stages of depthwise -> BN -> ReLU -> pointwise,
    a depth multiplier of 2 in the first unit, dilated depthwise convs, head x.view(n, c, -1).mean(-1) -> Linear.

    RF: stem 3; dw(x2) 5; dw s2 7 (j2); dw 11; dw s2 15 (j4); dw d2 15+16=31; dw d2 31+16=47; dw 55 = 55.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          b_dw_pw(32, 64, multiplier=2)),
            nn.Sequential(b_dw_pw(64, 64, stride=2), b_dw_pw(64, 96)),
            nn.Sequential(b_dw_pw(96, 128, stride=2), b_dw_pw(128, 128, dilation=2)),
            nn.Sequential(b_dw_pw(128, 160, dilation=2), b_dw_pw(160, 160)),
        )
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(160, 10)

    def forward(self, x):
        x = self.features(x)
        n, c = x.shape[:2]
        x = x.view(n, c, -1).mean(-1)
        return self.classifier(self.dropout(x))


class BSplitSeparable(nn.Module):
    """EVA S7 style convblock1..convblock4 where the only depthwise-separable conv is split across two blocks:
    convblock2 ends with a dilated depthwise conv (+BN, ReLU), convblock3 starts with the pointwise 1x1.
    Head: 1x1 conv to 10 channels, then x.sum((2, 3)) / (h * w), log_softmax.

    RF: 3, 5; convblock2 s2 7 (j2), dw d2 7+2*2*2=15; convblock3 1x1 15, s2 19 (j4), 27; convblock4 35, 43, 51,
    1x1 51 = 51. Map 32 -> 16 -> 8.
    """

    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(b_conv_bn(3, 16, drop=0.05), b_conv_bn(16, 32, drop=0.05))  # C1
        self.convblock2 = nn.Sequential(                                                            # C2
            b_conv_bn(32, 32, stride=2, drop=0.05),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.convblock3 = nn.Sequential(                                                            # C3
            nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(), nn.Dropout(0.05),
            b_conv_bn(48, 48, stride=2, drop=0.05), b_conv_bn(48, 48, drop=0.05),
        )
        self.convblock4 = nn.Sequential(                                                            # C4
            b_conv_bn(48, 48, drop=0.05), b_conv_bn(48, 48, drop=0.05), b_conv_bn(48, 48),
            nn.Conv2d(48, 10, 1),
        )

    def forward(self, x):
        x = self.convblock4(self.convblock3(self.convblock2(self.convblock1(x))))
        h, w = x.shape[-2:]
        x = x.sum((2, 3)) / (h * w)
        return F.log_softmax(x, dim=-1)


class BSqueezeExcite(nn.Module):
    """Modern style: SiLU, squeeze-excitation after each stage's pointwise, stages in a ModuleDict keyed c1..c4,
    head F.adaptive_avg_pool2d -> flatten -> Linear.

    RF: stem 3, dw 5; c2 dw s2 7 (j2), dw d2 15; c3 dw s2 19 (j4), dw 27; c4 dw d2 27+16=43, dw 51 = 51.
    Decision: the SE gate (a global average of the map, multiplied back per channel) is a side branch, not a
    spatial window: the receptive field is that of the main path (51). Counting the gate would make every unit
    see the whole image; the verdict (> 44) is the same either way. The SE multiply sits after each pointwise,
    never between a depthwise and its pointwise.
    """

    def __init__(self):
        super().__init__()

        def sep(cin, cout, stride=1, dilation=1):
            return b_dw_pw(cin, cout, stride=stride, dilation=dilation, act=nn.SiLU)

        self.stages = nn.ModuleDict({
            "c1": nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.SiLU(),
                                sep(24, 32)),
            "c2": nn.Sequential(sep(32, 48, stride=2), BPartSqueezeExcite(48), sep(48, 48, dilation=2)),
            "c3": nn.Sequential(sep(48, 64, stride=2), sep(64, 64), BPartSqueezeExcite(64)),
            "c4": nn.Sequential(sep(64, 96, dilation=2), sep(96, 96), BPartSqueezeExcite(96)),
        })
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        for name in ("c1", "c2", "c3", "c4"):
            x = self.stages[name](x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class BMishGelu(nn.Module):
    """Own block names through `blocks = (...)` with dotted paths; Mish in the entry, GELU after it;
    head 1x1 conv to 10 -> x.mean([-1, -2], keepdim=True) -> view(-1, 10) -> log_softmax.

    RF: entry 3, 5; mid.expand s2 7 (j2), 1x1, dw d2 7+2*2*2=15, 1x1; mid.spatial s2 19 (j4), 27;
    exit d2 27+2*2*4=43, 51; head 1x1 = 51. Map 32 -> 16 -> 8.
    Without the attribute, no other spelling finds four blocks (three containers + a bare head conv).
    """

    blocks = ("entry", "mid.expand", "mid.spatial", "exit")

    def __init__(self):
        super().__init__()
        self.entry = nn.Sequential(b_conv_bn(3, 16, act=nn.Mish), b_conv_bn(16, 32, act=nn.Mish))
        self.mid = nn.ModuleDict({
            "expand": nn.Sequential(
                b_conv_bn(32, 32, stride=2, act=nn.Mish),
                b_conv_bn(32, 64, kernel=1, padding=0, act=nn.GELU),
                nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64, bias=False), nn.BatchNorm2d(64), nn.GELU(),
                b_conv_bn(64, 64, kernel=1, padding=0, act=nn.GELU),
            ),
            "spatial": nn.Sequential(b_conv_bn(64, 64, stride=2, act=nn.GELU), b_conv_bn(64, 64, act=nn.GELU)),
        })
        self.exit = nn.Sequential(b_conv_bn(64, 48, padding=2, dilation=2, act=nn.GELU, drop=0.05),
                                  b_conv_bn(48, 48, act=nn.GELU))
        self.head = nn.Conv2d(48, 10, 1)

    def forward(self, x):
        x = self.entry(x)
        x = self.mid["expand"](x)
        x = self.mid["spatial"](x)
        x = self.head(self.exit(x))
        x = x.mean([-1, -2], keepdim=True)
        return F.log_softmax(x.view(-1, 10), dim=-1)


def b_no_stride_stages():
    """Builds the whole network as one nn.Sequential: four stages and a GAP head, downsampling by dilated
    padding=0 convs instead of strides (32 -> 24 -> 16 -> 8)."""
    return nn.Sequential(
        nn.Sequential(b_conv_bn(3, 16), b_conv_bn(16, 32)),
        nn.Sequential(
            b_conv_bn(32, 32, padding=0, dilation=4),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            b_conv_bn(32, 48, kernel=1, padding=0),
        ),
        nn.Sequential(b_conv_bn(48, 48, padding=0, dilation=4), b_conv_bn(48, 48, padding=4, dilation=4)),
        nn.Sequential(b_conv_bn(48, 56, padding=0, dilation=4), b_conv_bn(56, 56, padding=2, dilation=2),
                      b_conv_bn(56, 56, padding=2, dilation=2)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(56, 10)),
    )


class BSequentialBuilt(nn.Sequential):
    """A network that is the nn.Sequential a builder function returns (four conv stages + a conv-free head).
    No stride anywhere: dilated padding=0 convs shrink the map.

    RF (jump stays 1): 3, 5; d4 p0 5+8=13, dw d2 17, 1x1; d4 p0 25, d4 33; d4 p0 41, d2 45, d2 49 = 49.
    """

    def __init__(self):
        super().__init__(*b_no_stride_stages())


class BResidualSiLU(nn.Module):
    """ResNet-ish layer1..layer4, each a strided conv then a residual depthwise-separable body (add after the
    pointwise), SiLU, head x.mean(3).mean(2) -> Linear.

    RF (bodies count, shortcuts add nothing): 3, body 5; s2 7 (j2), body d2 7+8=15; s2 19 (j4), body 27;
    s2 35 (j8), body 51 = 51. Map 32 -> 16 -> 8 -> 4.
    """

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(b_conv_bn(3, 24, act=nn.SiLU), BPartResidualSep(24))
        self.layer2 = nn.Sequential(b_conv_bn(24, 48, stride=2, act=nn.SiLU), BPartResidualSep(48, dilation=2))
        self.layer3 = nn.Sequential(b_conv_bn(48, 64, stride=2, act=nn.SiLU), BPartResidualSep(64))
        self.layer4 = nn.Sequential(b_conv_bn(64, 96, stride=2, act=nn.SiLU), BPartResidualSep(96))
        self.linear = nn.Linear(96, 10)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out = out.mean(3).mean(2)
        return self.linear(out)


# ---------------------------------------------------------------------------------------------------------------
# Networks that fail one or two rules
# ---------------------------------------------------------------------------------------------------------------


EXPECTED = {
    "BFunctionalNet": {"receptive_field": 47, "fails": []},
    "BMobileNetV1": {"receptive_field": 55, "fails": []},
    "BSplitSeparable": {"receptive_field": 51, "fails": []},
    "BSqueezeExcite": {"receptive_field": 51, "fails": []},
    "BMishGelu": {"receptive_field": 51, "fails": []},
    "BSequentialBuilt": {"receptive_field": 49, "fails": []},
    "BResidualSiLU": {"receptive_field": 51, "fails": []},
}
