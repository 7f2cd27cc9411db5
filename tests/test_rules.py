"""Design rules and receptive field, on the real network and on networks built to break each rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_cli.models import CifarNet, NetConfig
from cifar_cli.receptive_field import empirical_receptive_field, receptive_field, total_receptive_field
from cifar_cli.rules import check_rules, count_parameters


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
    rows = receptive_field(net)
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
