"""Receptive field, layer by layer, read off the operations one forward pass runs.

Every feature map carries (rf, jump): how many input pixels one of its units sees, and how far apart in
input pixels its neighbouring units are. A window (convolution or pooling) of kernel k, stride s and
dilation d makes

    rf_out = rf_in + d * (k - 1) * jump_in,    jump_out = jump_in * s

per-position ops pass the widest of their inputs on (a residual add sees what its longest branch sees;
an identity shortcut adds nothing), and a global pooling ends the map. The network's receptive field is
the widest of any unit before the global pooling: what its classifier's features see.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from cifar_cli.graph import IMAGES, Graph, trace_graph
from cifar_cli.positions import PER_POSITION, UnknownLayer, Window, effect

__all__ = ["RFLayer", "UnknownLayer", "Walk", "empirical_receptive_field", "receptive_field",
           "total_receptive_field", "walk"]


@dataclass(frozen=True)
class RFLayer:
    name: str
    kind: str
    kernel: int
    stride: int
    dilation: int
    padding: int | str
    jump_in: int  # distance in input pixels between neighbouring units fed to this layer
    rf: int  # receptive field of one output unit, in input pixels
    out_size: int


@dataclass(frozen=True)
class Walk:
    rows: list[RFLayer]  # every window on the way, in the order the forward pass ran them
    total: int  # the widest receptive field of any feature map unit before global pooling
    widest: int | None  # the op whose output has it (None: the images themselves)
    jump: int  # the jump of that map


def walk(graph: Graph) -> Walk:
    """(rf, jump) of every feature map in the graph; raises UnknownLayer for an op it cannot read."""
    seen: dict[int, tuple[int, int]] = {IMAGES: (1, 1)}
    rows, total, widest, widest_jump = [], 1, None, 1
    for op in graph.ops:
        carried = [seen[i] for i in op.inputs if i in seen]
        if not carried:
            continue
        what = effect(graph, op)
        rf, jump = max(carried)
        if isinstance(what, Window):
            rows.append(RFLayer(op.label, what.kind, what.kernel, what.stride, what.dilation, what.padding, jump,
                                rf + what.dilation * (what.kernel - 1) * jump, op.out_shape[-2]))
            rf, jump = rows[-1].rf, jump * what.stride
        elif what != PER_POSITION:
            continue  # the map ends here: pooled to one value per channel, or flattened
        seen[op.index] = (rf, jump)
        if rf >= total:
            total, widest, widest_jump = rf, op.index, jump
    return Walk(rows, total, widest, widest_jump)


def receptive_field(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> Walk:
    """Every convolution and pooling window on the way, with the receptive field after it, and the total.

    Raises UnknownLayer, naming it, for an op whose effect on positions it cannot work out (upsampling,
    a transposed convolution) rather than guess."""
    return walk(trace_graph(model, input_size))


def total_receptive_field(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    return receptive_field(model, input_size).total


def empirical_receptive_field(model: nn.Module, size: int | None = None) -> int:
    """Measure the receptive field: the input extent that the gradient of one central unit reaches, on the
    feature map where the walk finds the widest one.

    A copy of the network gets positive weights and identity BatchNorm, so every ReLU passes and the gradient
    is nonzero wherever the unit can see; the input is made large enough (default: twice the analytic
    receptive field and a margin) that the unit's view stays clear of the borders. Max-pooling passes the
    gradient to one position only, so this measures networks without it.
    """
    found = receptive_field(model)
    if found.widest is None:
        return 1
    net = copy.deepcopy(model).cpu().double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
        for p in net.parameters():  # weights a forward reads directly (F.conv2d on a parameter) too
            p.abs_()
    size = size or 2 * found.total + 32
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    unit = trace_graph(net, images=x, keep=found.widest).kept
    h, w = unit.shape[-2:]
    unit[0, 0, h // 2, w // 2].backward()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    return int(rows.max() - rows.min() + 1)
