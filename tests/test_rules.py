"""Design rules and receptive field, on the real network and on networks built to break each rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_cli.models import CifarNet, NetConfig
from cifar_cli.receptive_field import empirical_receptive_field, receptive_field, total_receptive_field
from cifar_cli.rules import Rule, check_rules, count_parameters


def _verdicts(model: nn.Module) -> dict[str, bool]:
    return {r.name: r.passed for r in check_rules(model)}


def test_default_network_passes_every_rule() -> None:
    rules = check_rules(CifarNet(NetConfig()))
    assert all(r.passed for r in rules), [r for r in rules if not r.passed]
    assert len(rules) == 8


class _Blocks(nn.Module):
    """A small C1..C4 network whose parts the tests swap to break one rule at a time."""

    def __init__(self, c3: nn.Module | None = None, pool: nn.Module | None = None, functional_pool: bool = False):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1), nn.ReLU())
        self.c3 = c3 or nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2, stride=2), nn.ReLU())
        self.c4 = nn.Sequential(pool or nn.Identity(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU())
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)
        self.functional_pool = functional_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c3(self.c2(self.c1(x)))
        if self.functional_pool:
            x = F.max_pool2d(x, 2)
        return self.fc(self.gap(self.c4(x)).flatten(1))


def test_max_pooling_is_caught_as_a_module_and_as_a_function() -> None:
    assert _verdicts(_Blocks())["no max-pooling"]
    assert not _verdicts(_Blocks(pool=nn.MaxPool2d(2)))["no max-pooling"]
    assert not _verdicts(_Blocks(functional_pool=True))["no max-pooling"]


def test_missing_dilation_and_small_receptive_field_fail() -> None:
    verdicts = _verdicts(_Blocks(c3=nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())))
    assert not verdicts[">= 1 dilated conv"]
    assert not verdicts["receptive field > 44"]


def test_parameter_limit_and_shared_weights_counted_once() -> None:
    shared = nn.Linear(100, 100)
    assert count_parameters(nn.Sequential(shared, shared)) == 100 * 100 + 100
    wide = _Blocks(c3=nn.Sequential(nn.Conv2d(16, 2000, 3, padding=2, dilation=2), nn.Conv2d(2000, 16, 3)))
    assert not _verdicts(wide)["parameters < 200,000"]


def test_no_global_pooling_or_batchnorm_fails() -> None:
    net = _Blocks()
    net.gap = nn.Identity()
    net.fc = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    assert not _verdicts(net)["global average pooling before the classifier"]
    net = _Blocks()
    net.c1[1] = nn.Identity()
    assert not _verdicts(net)["BatchNorm"]


def test_receptive_field_by_hand() -> None:
    """3x3, then 3x3 stride 2, then 3x3 dilation 2: 3, 5, then 5 + 2*2*2 = 13."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                        nn.Conv2d(4, 4, 3, padding=2, dilation=2))
    rows = receptive_field(net).rows
    assert [r.rf for r in rows] == [3, 5, 13]
    assert [r.jump_in for r in rows] == [1, 1, 2]
    assert [r.out_size for r in rows] == [32, 16, 16]


@pytest.mark.parametrize("widths", [(32, 64, 128, 192), (8, 8, 16, 16)])
def test_analytic_receptive_field_matches_the_gradient(widths: tuple[int, int, int, int]) -> None:
    model = CifarNet(NetConfig(widths=widths))
    features = nn.Sequential(model.c1, model.c2, model.c3, model.c4)
    analytic = total_receptive_field(model)
    assert analytic > 44
    assert empirical_receptive_field(features, size=2 * analytic + 32) == analytic


# --- each rule judges the computation, however it is spelled --------------------------------------------


def _cbr(cin: int, cout: int, **conv: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=conv.pop("padding", 1), bias=False, **conv),
                         nn.BatchNorm2d(cout), nn.ReLU())


class _Heads(nn.Module):
    """C1..C4 (RF 55, 4x4 at the end) under a head written one of the ways students write it."""

    def __init__(self, head: str):
        super().__init__()
        self.head = head
        self.c1 = nn.Sequential(_cbr(3, 16), _cbr(16, 16))
        self.c2 = nn.Sequential(_cbr(16, 32, stride=2), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                                nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 1))
        self.c3 = nn.Sequential(_cbr(32, 32, stride=2), _cbr(32, 32, padding=2, dilation=2))
        self.c4 = nn.Sequential(_cbr(32, 32, stride=2), _cbr(32, 32))
        self.fc, self.to_classes = nn.Linear(32, 10), nn.Conv2d(32, 10, 1)
        self.hidden, self.wide = nn.Linear(32, 20), nn.LazyLinear(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c4(self.c3(self.c2(self.c1(x))))
        return {
            "adaptive": lambda: self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)),
            "mean": lambda: self.fc(x.mean((2, 3))),
            "mean keepdim, 1x1 conv, log_softmax": lambda: F.log_softmax(
                self.to_classes(x.mean([-1, -2], keepdim=True)).view(-1, 10), dim=-1),
            "view then mean": lambda: self.fc(x.view(x.size(0), x.size(1), -1).mean(-1)),
            "two means": lambda: self.fc(x.mean(3).mean(2)),
            "sum over positions / (h * w)": lambda: self.fc(x.sum((2, 3)) / (x.size(2) * x.size(3))),
            "1x1 conv to 10, then AvgPool2d(map size)": lambda: F.log_softmax(
                F.avg_pool2d(self.to_classes(x), 4).view(-1, 10), dim=1),
            "GAP, linear, relu, linear": lambda: self.wide(F.relu(self.hidden(x.mean((2, 3))))),
            "global max": lambda: self.fc(F.adaptive_max_pool2d(x, 1).flatten(1)),
            "amax": lambda: self.fc(x.amax((2, 3))),
            "flatten": lambda: self.wide(x.flatten(1)),
            "AvgPool2d smaller than the map": lambda: self.wide(F.avg_pool2d(x, 2).flatten(1)),
            "GAP in a squeeze-excitation gate only": lambda: self.wide(
                (x * torch.sigmoid(x.mean((2, 3)))[:, :, None, None]).flatten(1)),
            "GAP beside the flattened map": lambda: self.wide(torch.cat([x.mean((2, 3)), x.flatten(1)], 1)),
        }[self.head]()


GAP = "global average pooling before the classifier"
HEADS = {"adaptive": True, "mean": True, "mean keepdim, 1x1 conv, log_softmax": True, "view then mean": True,
         "two means": True, "sum over positions / (h * w)": True, "1x1 conv to 10, then AvgPool2d(map size)": True,
         "GAP, linear, relu, linear": True, "global max": False, "amax": False, "flatten": False,
         "AvgPool2d smaller than the map": False, "GAP in a squeeze-excitation gate only": False,
         "GAP beside the flattened map": False}


@pytest.mark.parametrize(("head", "passes"), HEADS.items())
def test_global_average_pooling_is_judged_by_what_the_head_computes(head: str, passes: bool) -> None:
    model = _Heads(head)
    rules = {r.name: r for r in check_rules(model)}
    assert rules[GAP].passed is passes, rules[GAP]
    assert rules["no max-pooling"].passed is (head not in ("global max", "amax"))
    # 3, 5 | 7 (stride 2), 11 | 15 (stride 2), 31 (dilation 2) | 39 (stride 2), 55; a 2x2 window then adds 8
    assert total_receptive_field(model) == (63 if head == "AvgPool2d smaller than the map" else 55)
    if not passes:
        assert "AdaptiveAvgPool2d(1)" in rules[GAP].fix


class _Separable(nn.Module):
    def __init__(self, between: str):
        super().__init__()
        self.between = between
        self.dw = nn.Conv2d(16, 32 if between == "depth multiplier" else 16, 3, padding=1,
                            groups=4 if between == "grouped" else 16)
        self.pw = nn.Conv2d(32 if between == "depth multiplier" else 16, 16, 1)
        self.bn = nn.BatchNorm2d(self.dw.out_channels)
        self.stem, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x)
        y = {"nothing": lambda: y, "depth multiplier": lambda: y,
             "BatchNorm, Mish, dropout": lambda: F.dropout(F.mish(self.bn(y)), 0.1, self.training),
             "a residual add": lambda: y + x, "grouped": lambda: y}[self.between]()
        return self.fc(self.pw(y).mean((2, 3)))


@pytest.mark.parametrize(("between", "passes"), [("nothing", True), ("depth multiplier", True),
                                                 ("BatchNorm, Mish, dropout", True), ("a residual add", False),
                                                 ("grouped", False)])
def test_depthwise_separable_is_a_depthwise_reaching_a_pointwise_through_per_pixel_layers(
        between: str, passes: bool) -> None:
    rule = next(r for r in check_rules(_Separable(between)) if r.name == ">= 1 depthwise-separable conv")
    assert rule.passed is passes, rule
    if between == "grouped":
        assert "groups=4 over 16 channels" in rule.figure


def test_blocks_are_found_however_they_are_named_and_a_failure_says_how_to_name_them() -> None:
    def four(names: list[str]) -> nn.Module:
        net = nn.Module()
        for i, name in enumerate(names):
            net.add_module(name, _cbr(3 if i == 0 else 8, 8))
        net.forward = lambda x: net.get_submodule(names[3])(net.get_submodule(names[2])(
            net.get_submodule(names[1])(net.get_submodule(names[0])(x)))).mean((2, 3))
        return net

    def verdict(net: nn.Module) -> Rule:
        return next(r for r in check_rules(net) if r.name == "blocks C1 C2 C3 C4")

    for names in (["c1", "c2", "c3", "c4"], ["C1", "C2", "C3", "C4"], ["convblock1", "convblock2", "convblock3",
                  "convblock4"], ["layer_1", "layer_2", "layer_3", "layer_4"], ["prep", "mid", "deep", "out"]):
        assert verdict(four(names)).passed, names
    headed = four(["convblock1", "convblock2", "convblock3", "convblock4"])
    headed.convblock5 = nn.Conv2d(8, 10, 1)  # the course's classifier: GAP, then a numbered 1x1 to 10
    headed.forward = lambda x: headed.convblock5(headed.convblock4(headed.convblock3(headed.convblock2(
        headed.convblock1(x)))).mean((2, 3), keepdim=True)).flatten(1)
    assert verdict(headed).figure.startswith("C1..C4 = convblock1, convblock2, convblock3, convblock4")
    swapped = four(["c1", "c2", "c4", "c3"])  # c4 runs before c3
    assert verdict(swapped).figure == "c4 runs before c3 has finished: blocks run one after another"
    listed = four(["a", "b", "c", "d"])
    listed.blocks = ("a", "b", "x", "d")
    assert verdict(listed).figure == "blocks names 'x', which is not a module of this network"
    eight = nn.Sequential(*[_cbr(3 if i == 0 else 8, 8) for i in range(8)])
    failed = verdict(eight)
    assert not failed.passed and failed.fix.startswith("name your four blocks c1, c2, c3, c4")


def test_what_the_walk_cannot_read_fails_the_rule_naming_it_and_never_guesses() -> None:
    class Upsampled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down, self.fc = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.interpolate(self.down(x), scale_factor=2).mean((2, 3)))

    rule = next(r for r in check_rules(Upsampled()) if r.name == "receptive field > 44")
    assert not rule.passed and "interpolate" in rule.figure and rule.fix


def test_a_strided_slice_doubles_the_jump_and_channels_last_layers_change_no_view() -> None:
    class Sliced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.mix, self.fc = nn.Linear(8, 8), nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)[:, :, ::2, ::2]
            x = self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # a linear over channels, channels-last
            return self.fc(self.b(x).mean((2, 3)))

    assert [r.rf for r in receptive_field(Sliced()).rows] == [3, 3, 7]  # 3, subsample (jump 2), 3 + 2*2
    assert empirical_receptive_field(Sliced()) == 7


def test_each_rule_states_its_meaning_in_summary_help_and_in_the_docs() -> None:
    from conftest import cli

    from cifar_cli.rulebook import RULES

    help_text = " ".join(cli("summary", "--help").stdout.replace("│", " ").split())
    docs = " ".join((Path(__file__).parents[1] / "docs" / "rules.md").read_text().split())
    assert [r.name for r in check_rules(CifarNet(NetConfig()))] == [r.name for r in RULES]
    for rule in RULES:
        assert f"{rule.name}: {rule.meaning}" in help_text, rule.name
        assert f"| {rule.name} | {rule.meaning} | {rule.fix} |" in docs, rule.name
