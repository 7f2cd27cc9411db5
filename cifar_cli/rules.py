"""The design rules of the assignment, each checked on the real modules and the real forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cifar_cli.receptive_field import UnknownLayer, total_receptive_field, trace_forward

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


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1


def check_rules(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[Rule]:
    trace = trace_forward(model, input_size)
    calls = trace.calls
    modules = [c.module for c in calls]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]

    params = count_parameters(model)
    max_pools = [c.name for c in calls if "MaxPool" in type(c.module).__name__]
    max_pools += sorted({name for name, _, _ in trace.functions if "max_pool" in name})
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
    try:
        rf, rf_figure = total_receptive_field(model), ""
    except UnknownLayer as e:  # say why, and fail the rule, rather than guess a number
        rf, rf_figure = 0, f"unknown: {e}".replace("receptive field: ", "")

    return [
        Rule("parameters < 200,000", params < MAX_PARAMS, f"{params:,} parameters"),
        Rule("no max-pooling", not max_pools, "none" if not max_pools else ", ".join(max_pools)),
        Rule(">= 1 depthwise-separable conv", separable >= 1, f"{separable} depthwise + pointwise pairs"),
        Rule(">= 1 dilated conv", bool(dilated), f"{len(dilated)} dilated convolutions"),
        Rule("global average pooling before the classifier", gap_ok,
             "GAP -> linear" if gap_ok else "no 1x1 average pooling between the last conv and the classifier"),
        Rule("BatchNorm", bool(batchnorms), f"{len(batchnorms)} BatchNorm2d layers"),
        Rule("blocks C1 C2 C3 C4", len(blocks) == len(BLOCKS), " ".join(b.upper() for b in blocks) or "none"),
        Rule("receptive field > 44", rf > MIN_RECEPTIVE_FIELD, rf_figure or f"{rf} pixels"),
    ]
