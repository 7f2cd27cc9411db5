"""The design rules of the assignment, each judged by what it means (rulebook.py) on the operations one
forward pass runs, however the network spells them: modules, functional calls or tensor methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.parameter import is_lazy

from cifar_cli import rulebook
from cifar_cli.blocks import find_blocks
from cifar_cli.graph import IMAGES, Graph, Op, trace_graph
from cifar_cli.positions import (
    GLOBAL_AVERAGE,
    GLOBAL_MAX,
    SHUFFLES,
    UnknownLayer,
    conv_of,
    global_pooling,
    max_over_positions,
    window_of,
)
from cifar_cli.receptive_field import walk
from cifar_cli.rulebook import MAX_PARAMS, MIN_RECEPTIVE_FIELD, RuleText
from cifar_cli.terminal import counted

__all__ = ["MAX_PARAMS", "MIN_RECEPTIVE_FIELD", "Rule", "check_rules", "count_parameters"]


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    figure: str  # what was measured, in words a reader can check
    fix: str = ""  # one line: what to change; empty when the rule passes


def count_parameters(model: nn.Module) -> int:
    """Each parameter once, however many modules share it (model.parameters() deduplicates); a lazy layer
    that no forward pass has shaped yet holds none."""
    return sum(p.numel() for p in model.parameters() if not is_lazy(p))


def _verdict(text: RuleText, passed: bool, figure: str, fix: str = "") -> Rule:
    return Rule(text.name, passed, figure, "" if passed else fix or text.fix)


def _parameters(model: nn.Module, graph: Graph) -> Rule:
    params = count_parameters(model)
    own = {name: sum(p.numel() for p in m.parameters(recurse=False) if not is_lazy(p))
           for name, m in model.named_modules()}
    widest = sorted((n for n in own if own[n]), key=own.get, reverse=True)[:3]
    fix = (f"remove {params - MAX_PARAMS + 1:,} or more: the largest layers are "
           + ", ".join(f"{n} ({own[n]:,})" for n in widest) + "; " + rulebook.PARAMETERS.fix)
    return _verdict(rulebook.PARAMETERS, params < MAX_PARAMS, f"{params:,} parameters", fix)


def _max_pooling(model: nn.Module, graph: Graph) -> Rule:
    found = [op.label for op in graph.ops if max_over_positions(graph, op)]
    return _verdict(rulebook.NO_MAX_POOLING, not found, ", ".join(dict.fromkeys(found)) or "none")


def _per_pixel(op: Op, shape: tuple[int, ...]) -> bool:
    """Works on each position and channel alone and keeps the map's shape (BatchNorm, activations, dropout)."""
    return (op.out_shape == shape and conv_of(op) is None and window_of(op) is None and op.name not in SHUFFLES
            and op.name not in ("cat", "stack"))


def _pointwise_after(graph: Graph, consumers: dict[int, list[int]], depthwise: Op) -> Op | None:
    """The first 1x1 convolution that the depthwise output reaches through per-pixel ops fed by it alone."""
    inside, frontier = {depthwise.index}, [depthwise.index]
    while frontier:
        for j in consumers[frontier.pop(0)]:
            op, conv = graph.ops[j], conv_of(graph.ops[j])
            if conv is not None and conv.pointwise:
                return op
            if j not in inside and _per_pixel(op, depthwise.out_shape) and set(op.inputs) <= inside:
                inside.add(j)
                frontier.append(j)
    return None


def _separable(model: nn.Module, graph: Graph) -> Rule:
    consumers = graph.consumers()
    depthwise = [op for op in graph.ops if (conv := conv_of(op)) and conv.depthwise]
    pairs = [(dw, pw) for dw in depthwise if (pw := _pointwise_after(graph, consumers, dw))]
    if pairs:
        dw, pw = pairs[0]
        return _verdict(rulebook.SEPARABLE, True, f"{len(pairs)} depthwise -> pointwise (first: {dw.label} -> "
                                                   f"{pw.label})")
    grouped = [(op, conv) for op in graph.ops if (conv := conv_of(op)) and conv.groups > 1 and not conv.depthwise]
    if depthwise:
        figure = f"depthwise {depthwise[0].label} reaches no 1x1 convolution through per-pixel layers"
    elif grouped:
        op, conv = grouped[0]
        figure = (f"{op.label} has groups={conv.groups} over {conv.in_channels} channels: grouped, not depthwise"
                  if conv.groups != conv.in_channels else f"{op.label} is a depthwise 1x1: it sees no neighbours")
    else:
        figure = "no depthwise convolution (groups = in_channels)"
    return _verdict(rulebook.SEPARABLE, False, figure)


def _dilated(model: nn.Module, graph: Graph) -> Rule:
    convs = [(op, conv_of(op)) for op in graph.ops if conv_of(op)]
    dilated = [op.label for op, conv in convs if conv.dilated]
    if dilated:
        return _verdict(rulebook.DILATED, True, f"{counted(len(dilated), 'dilated convolution')} "
                                                f"({', '.join(dilated[:3])}{', ...' if len(dilated) > 3 else ''})")
    useless = [op.label for op, conv in convs if max(conv.dilation) > 1]
    figure = (f"only 1x1 convolutions are dilated ({', '.join(useless[:3])}): no effect" if useless
              else "no convolution has dilation > 1")
    return _verdict(rulebook.DILATED, False, figure)


def _reachable_around(graph: Graph, consumers: dict[int, list[int]], blocked: set[int]) -> set[int]:
    """The ops the images reach without passing through any op in `blocked`."""
    reached, frontier = {IMAGES}, [IMAGES]
    while frontier:
        for j in consumers[frontier.pop()]:
            if j not in reached and j not in blocked:
                reached.add(j)
                frontier.append(j)
    return reached


def _global_average(model: nn.Module, graph: Graph) -> Rule:
    text, consumers = rulebook.GLOBAL_AVERAGE, graph.consumers()
    kinds = {op.index: global_pooling(graph, op) for op in graph.ops}
    averages = {i for i, kind in kinds.items() if kind == GLOBAL_AVERAGE}
    if graph.output is None:
        return _verdict(text, False, "the output does not depend on the image")
    if graph.output not in _reachable_around(graph, consumers, averages):
        ancestors = graph.ancestors(graph.output)
        last = max(averages & ancestors)
        source = next(o for o in graph.single_input_chain(graph.ops[last]) if o.is_map())
        after = [graph.ops[i].name for i in sorted(ancestors) if i > last]
        h, w = source.out_shape[-2:]
        return _verdict(text, True, f"average over the {h}x{w} map ({graph.ops[last].label})"
                                    + (f", then {', '.join(dict.fromkeys(after))}" if after else ""))
    maxima = [graph.ops[i].label for i, kind in kinds.items() if kind == GLOBAL_MAX]
    if maxima:
        return _verdict(text, False, f"{maxima[0]} takes the maximum over positions, not the average",
                        "replace the global max pooling with nn.AdaptiveAvgPool2d(1)")
    feeding = graph.ancestors(graph.output)
    last_map = max((op for op in graph.ops if op.is_map() and op.index in feeding), key=lambda op: op.index,
                   default=None)
    if last_map is None:
        return _verdict(text, False, "no feature map reaches the output")
    h, w = last_map.out_shape[-2:]
    window = window_of(last_map)
    if window is not None and "avg" in window.kind:
        return _verdict(text, False, f"{last_map.label} averages windows of {window.kernel}x{window.kernel} and "
                                     f"leaves {h}x{w} positions",
                        "use nn.AdaptiveAvgPool2d(1), which averages the whole map whatever its size")
    return _verdict(text, False, f"the classifier reads all {h}x{w} positions of {last_map.label}")


def _batchnorm(model: nn.Module, graph: Graph) -> Rule:
    found = [op for op in graph.ops if op.name == "batch_norm" and len(op.in_shape) == 4]
    if found:
        return _verdict(rulebook.BATCHNORM, True, f"{len(found)} batch normalisations of feature maps")
    others = sorted({op.name for op in graph.ops if op.name.endswith("_norm")})
    return _verdict(rulebook.BATCHNORM, False, "no batch normalisation of a feature map"
                    + (f" ({', '.join(others)} instead)" if others else ""))


def _blocks(model: nn.Module, graph: Graph) -> Rule:
    found = find_blocks(model, graph)
    if found.problem:
        return _verdict(rulebook.BLOCKS, False, found.problem)
    if found.names == ("c1", "c2", "c3", "c4") or found.names == ("C1", "C2", "C3", "C4"):
        return _verdict(rulebook.BLOCKS, True, "C1 C2 C3 C4")
    return _verdict(rulebook.BLOCKS, True, f"C1..C4 = {', '.join(found.names)} (by {found.found_by})")


def _receptive_field(model: nn.Module, graph: Graph) -> Rule:
    text = rulebook.RECEPTIVE_FIELD
    try:
        found = walk(graph)
    except UnknownLayer as e:  # say why, and fail the rule, rather than guess a number
        return _verdict(text, False, f"unknown: {e}".replace("receptive field: ", ""),
                        "write the resizing as a convolution or pooling the walk can read (nn.Conv2d, nn.AvgPool2d)")
    short = MIN_RECEPTIVE_FIELD + 1 - found.total
    fix = (f"widen the view by {counted(short, 'pixel')} or more: one more 3x3 convolution on the last "
           f"map adds {2 * found.jump}, with dilation=2 {4 * found.jump}; a stride-2 convolution earlier doubles "
           "what every later layer adds")
    return _verdict(text, found.total > MIN_RECEPTIVE_FIELD, counted(found.total, "pixel"), fix)


_JUDGES: tuple[Callable[[nn.Module, Graph], Rule], ...] = (
    _parameters, _max_pooling, _separable, _dilated, _global_average, _batchnorm, _blocks, _receptive_field)


def check_rules(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[Rule]:
    """Every rule of rulebook.RULES, in that order, judged on one traced forward pass."""
    graph = trace_graph(model, input_size)
    return [judge(model, graph) for judge in _JUDGES]
