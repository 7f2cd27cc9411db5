"""Which modules are a network's four blocks, C1 to C4.

The one rule that reads names: a block is how a person organises layers, not something the computation
shows. So we look for the ways people write four blocks (docs/rules.md lists them), then check by the
forward pass that each runs a convolution, that they run in order, and that they hold the network's
convolutions rather than a corner of them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from torch import nn

from cifar_cli.graph import IMAGES, Graph, Op
from cifar_cli.positions import conv_of

COUNT = 4
_NUMBERED = re.compile(r"([A-Za-z]+(?:_[A-Za-z]+)*?)_?(\d+)")
HOW_TO_NAME = ('name your four blocks c1, c2, c3, c4 (self.c1 = nn.Sequential(...)), or list them in a class '
               'attribute: blocks = ("first", "second", "third", "fourth")')


@dataclass(frozen=True)
class Blocks:
    names: tuple[str, ...]  # the modules found, in order ((): none)
    found_by: str  # how: "the blocks attribute", "their names", ...
    problem: str = ""  # why they are not four blocks that run in order; "" when they are


def find_blocks(model: nn.Module, graph: Graph) -> Blocks:
    modules = dict(model.named_modules())
    listed = getattr(model, "blocks", None)
    if isinstance(listed, (tuple, list)) and all(isinstance(n, str) for n in listed):
        missing = [n for n in listed if n not in modules or n == ""]
        if missing:
            return Blocks(tuple(listed), "the blocks attribute",
                          f"blocks names {missing[0]!r}, which is not a module of this network")
        return _judge(tuple(listed), "the blocks attribute", graph)
    convs = _feature_convs(graph)
    families, corner = _numbered_families(modules, graph, convs), None
    for names, found_by in (*families, *_stages(modules, graph, convs)):
        held = _convs_in(names, convs)
        if len(names) == COUNT and 2 * held >= len(convs):
            return _judge(names, found_by, graph)
        if len(names) == COUNT and corner is None:
            corner = Blocks(names, found_by, f"{' '.join(names)} hold {held} of the network's {len(convs)} "
                                             "convolutions; four blocks hold at least half")
    return corner or Blocks((), "", _nothing_found(families))


def _feature_convs(graph: Graph) -> list[Op]:
    """The convolutions that make features: all but a classifier, the last convolution when it is a 1x1
    giving the output's width (`convblock5 = nn.Conv2d(c, 10, 1)` before or after the GAP is no block)."""
    convs = [(op, conv_of(op)) for op in graph.ops if conv_of(op)]
    width = graph.ops[graph.output].out_shape[-1] if graph.output not in (None, IMAGES) else None
    if convs and convs[-1][1].kernel == (1, 1) and convs[-1][1].out_channels == width:
        convs = convs[:-1]
    return [op for op, _ in convs]


def _inside(op: Op, path: str) -> bool:
    return op.owner == path or op.owner.startswith(path + ".")


def _is_container(path: str, graph: Graph, module: nn.Module, convs: list[Op]) -> bool:
    """A module with children, or a forward of its own that runs several ops, that makes features."""
    return any(_inside(op, path) for op in convs) and (
        bool(list(module.children())) or sum(_inside(op, path) for op in graph.ops) > 1)


def _convs_in(names: tuple[str, ...], convs: list[Op]) -> int:
    return sum(any(_inside(op, n) for n in names) for op in convs)


def _numbered_families(modules: dict[str, nn.Module], graph: Graph, convs: list[Op]
                       ) -> list[tuple[tuple[str, ...], str]]:
    """Sibling modules numbered from 1 under one prefix (c1.., convblock1.., layer_1..), shallowest first,
    those called c or C before the others. A family other than c1..c4 must be of containers. A member
    that runs but makes no features (the classifier, a dropout) is not counted; one that never runs is."""
    found = []
    for parent, module in modules.items():
        groups: dict[str, dict[int, str]] = defaultdict(dict)
        for child, _ in module.named_children():
            match = _NUMBERED.fullmatch(child)
            if match:
                groups[match[1].lower()][int(match[2])] = f"{parent}.{child}" if parent else child
        for prefix, members in groups.items():
            names = tuple(n for _, n in sorted(members.items())
                          if any(_inside(op, n) for op in convs) or not any(_inside(op, n) for op in graph.ops))
            if 1 not in members or not names:
                continue
            if prefix != "c" and not all(_is_container(n, graph, modules[n], convs) for n in names):
                continue
            found.append((names, prefix, parent.count(".") + bool(parent)))
    found.sort(key=lambda f: (f[1] != "c", f[2]))
    return [(names, "their names") for names, _, _ in found]


def _stages(modules: dict[str, nn.Module], graph: Graph, convs: list[Op]) -> list[tuple[tuple[str, ...], str]]:
    """Modules whose children that make features are exactly four containers (a Sequential of stages)."""
    found = []
    for parent, module in modules.items():
        stages = tuple(f"{parent}.{c}" if parent else c for c, m in module.named_children()
                       if _is_container(f"{parent}.{c}" if parent else c, graph, m, convs))
        if len(stages) == COUNT:
            found.append((stages, f"the four stages of {parent or 'the network'}"))
    return found


def _judge(names: tuple[str, ...], found_by: str, graph: Graph) -> Blocks:
    if len(names) != COUNT:
        return Blocks(names, found_by, f"{found_by} lists {len(names)} modules, not four")
    spans = []
    for name in names:
        ops = [op for op in graph.ops if _inside(op, name)]
        if not ops:
            return Blocks(names, found_by, f"{name} never runs in the forward pass")
        if not any(op.name == "conv2d" for op in ops):
            return Blocks(names, found_by, f"{name} runs no convolution")
        spans.append((ops[0].index, ops[-1].index))
    for (name, (_, end)), (after, (start, _)) in zip(zip(names, spans), zip(names[1:], spans[1:])):
        if start < end:
            return Blocks(names, found_by, f"{after} runs before {name} has finished: blocks run one after another")
    return Blocks(names, found_by)


def _nothing_found(families: list[tuple[tuple[str, ...], str]]) -> str:
    """What was there instead of four blocks, for the failure's figure."""
    longest = max((names for names, _ in families), key=len, default=())
    if len(longest) > COUNT:
        return f"{longest[0]}..{longest[-1]} are {len(longest)} numbered modules, not four blocks"
    if longest:
        return f"only {' '.join(longest)}"
    return "no modules named c1..c4 and no blocks attribute"
