"""Receptive field, layer by layer, read off the real modules as a forward pass calls them.

The walk follows the longest path through the network (residual bodies included, identity shortcuts
add no layers), which is where the receptive field is largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class Call:
    """One leaf module as the forward pass met it."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def trace_calls(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[Call]:
    """Run one eval-mode forward pass on zeros and list the leaf modules in the order they ran."""
    calls: list[Call] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls.append(Call(names[module], module, tuple(inputs[0].shape), tuple(output.shape)))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def _pair(v: int | tuple[int, ...]) -> int:
    """The height component; the networks here are square, so one number describes the layer."""
    return v[0] if isinstance(v, tuple) else int(v)


@dataclass(frozen=True)
class RFLayer:
    name: str
    kind: str
    kernel: int
    stride: int
    dilation: int
    padding: int
    jump_in: int  # distance in input pixels between neighbouring units fed to this layer
    rf: int  # receptive field of one output unit, in input pixels
    out_size: int


def receptive_field(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[RFLayer]:
    """Every convolution and pooling layer on the path, with the receptive field after it.

    rf_out = rf_in + (dilation * (kernel - 1)) * jump_in,   jump_out = jump_in * stride
    """
    rf, jump, rows = 1, 1, []
    for call in trace_calls(model, input_size):
        m = call.module
        if isinstance(m, nn.Conv2d):
            kind = ("depthwise" if m.groups > 1 and m.groups == m.in_channels
                    else "pointwise" if m.kernel_size == (1, 1) else "conv")
            k, s, d, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation), _pair(m.padding)
        elif isinstance(m, _POOLS):
            kind = type(m).__name__
            k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
            d = _pair(getattr(m, "dilation", 1))
        else:
            continue
        rows.append(RFLayer(call.name, kind, k, s, d, p, jump, rf + d * (k - 1) * jump, call.out_shape[-2]))
        rf, jump = rows[-1].rf, jump * s
    return rows


def total_receptive_field(model: nn.Module) -> int:
    rows = receptive_field(model)
    return rows[-1].rf if rows else 1


def empirical_receptive_field(features: nn.Module, size: int = 160) -> int:
    """Measure the receptive field: the input extent that the gradient of one central output unit reaches.

    A copy of `features` gets positive weights and identity BatchNorm, so every ReLU passes and the
    gradient is nonzero wherever the unit can see; the input is made large enough that the unit's view
    stays clear of the borders.
    """
    import copy

    net = copy.deepcopy(features).cpu().double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = net(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    return int(rows.max() - rows.min() + 1)
