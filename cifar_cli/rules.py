"""The design rules of the assignment, each checked on the real modules and the real forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cifar_cli.receptive_field import total_receptive_field, trace_calls

MAX_PARAMS = 200_000
MIN_RECEPTIVE_FIELD = 44  # strictly greater than this
BLOCKS = ("c1", "c2", "c3", "c4")


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    figure: str  # what was measured, in words a reader can check


def count_parameters(model: nn.Module) -> int:
    """Each parameter once, however many modules share it (model.parameters() deduplicates)."""
    return sum(p.numel() for p in model.parameters())


class _FunctionLog(TorchFunctionMode):
    """Records the names of torch functions called during a forward pass (catches F.max_pool2d too)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1


def check_rules(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[Rule]:
    calls = trace_calls(model, input_size)
    modules = [c.module for c in calls]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]

    log = _FunctionLog()
    was_training = model.training
    model.eval()
    with torch.no_grad(), log:
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    model.train(was_training)

    params = count_parameters(model)
    max_pools = [c.name for c in calls if "MaxPool" in type(c.module).__name__]
    max_pools += sorted(n for n in log.names if "max_pool" in n)
    separable = sum(1 for a, b in zip(modules, modules[1:]) if _is_depthwise(a) and _is_pointwise(b))
    dilated = [m for m in convs if max(m.dilation) > 1]
    batchnorms = [m for m in modules if isinstance(m, nn.BatchNorm2d)]
    blocks = [b for b in BLOCKS if isinstance(getattr(model, b, None), nn.Module)]

    # Global average pooling: a pooling call whose output is 1x1, after the last convolution, followed
    # only by reshaping, dropout and the classifier.
    gap_index = next((i for i, c in enumerate(calls) if isinstance(c.module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))
                      and c.out_shape[-2:] == (1, 1)), None)
    last_conv = max((i for i, c in enumerate(calls) if isinstance(c.module, nn.Conv2d)), default=-1)
    tail = [] if gap_index is None else [c.module for c in calls[gap_index + 1:]]
    gap_ok = (gap_index is not None and gap_index > last_conv and any(isinstance(m, nn.Linear) for m in tail)
              and all(isinstance(m, (nn.Flatten, nn.Dropout, nn.Linear)) for m in tail))
    rf = total_receptive_field(model)

    return [
        Rule("parameters < 200,000", params < MAX_PARAMS, f"{params:,} parameters"),
        Rule("no max-pooling", not max_pools, "none" if not max_pools else ", ".join(max_pools)),
        Rule(">= 1 depthwise-separable conv", separable >= 1, f"{separable} depthwise + pointwise pairs"),
        Rule(">= 1 dilated conv", bool(dilated), f"{len(dilated)} dilated convolutions"),
        Rule("global average pooling before the classifier", gap_ok,
             "GAP -> linear" if gap_ok else "no 1x1 average pooling between the last conv and the classifier"),
        Rule("BatchNorm", bool(batchnorms), f"{len(batchnorms)} BatchNorm2d layers"),
        Rule("blocks C1 C2 C3 C4", len(blocks) == len(BLOCKS), " ".join(b.upper() for b in blocks) or "none"),
        Rule("receptive field > 44", rf > MIN_RECEPTIVE_FIELD, f"{rf} pixels"),
    ]
