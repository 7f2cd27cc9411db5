"""Receptive field, layer by layer, read off the real modules as a forward pass calls them.

The walk follows the longest path through the network (residual bodies included, identity shortcuts
add no layers), which is where the receptive field is largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cifar_cli.errors import CifarError

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
# Layers that work on each pixel (or each channel) alone: they do not widen what a unit sees.
_PER_PIXEL = (nn.modules.activation.__name__, nn.modules.batchnorm.__name__, nn.modules.dropout.__name__,
              nn.modules.normalization.__name__, nn.modules.instancenorm.__name__, nn.modules.linear.__name__,
              nn.modules.flatten.__name__)
# Torch functions that mix neighbouring pixels; a network that calls one outside a layer we can read
# (F.max_pool2d in a forward, say) has a receptive field this walk cannot see.
_SPATIAL = ("conv", "pool", "interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle", "unfold", "fold",
            "grid_sample")


class UnknownLayer(CifarError):
    """The walk met a layer whose effect on the receptive field it cannot work out."""


@dataclass(frozen=True)
class Call:
    """One leaf module as the forward pass met it."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass
class Trace:
    """One eval-mode forward pass: the leaf modules in the order they ran, and every torch function
    called, each with the name of the module whose own forward called it ("" for the top level) and
    the shape it returned."""

    calls: list[Call] = field(default_factory=list)
    functions: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, trace: Trace):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.trace, self.running = trace, [""]

    def enter(self, module: nn.Module, inputs: tuple) -> None:
        self.running.append(self.names[module])

    def leave(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.running.pop()
        if not list(module.children()) and isinstance(output, torch.Tensor) and inputs:
            self.trace.calls.append(Call(self.names[module], module, tuple(inputs[0].shape), tuple(output.shape)))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        result = func(*args, **(kwargs or {}))
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else ()
        self.trace.functions.append((getattr(func, "__name__", str(func)), self.running[-1], shape))
        return result


def trace_forward(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> Trace:
    """Run one eval-mode forward pass on zeros and record what ran (see Trace)."""
    trace = Trace()
    tracer = _Tracer(model, trace)
    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(tracer.enter), m.register_forward_hook(tracer.leave))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), tracer:
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return trace


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

    Raises UnknownLayer, naming it, for a layer or call whose effect it cannot work out (a custom
    module that mixes pixels, upsampling, a pooling function called in a forward) rather than guess.
    """
    trace = trace_forward(model, input_size)
    leaves = {c.name for c in trace.calls}
    for function, owner, shape in trace.functions:
        global_pool = function.startswith("adaptive_") and shape[-2:] == (1, 1)  # ends the path, hides nothing
        if any(word in function for word in _SPATIAL) and owner not in leaves and not global_pool:
            where = f"the forward of {owner!r}" if owner else "the network's forward"
            raise UnknownLayer(f"receptive field: {where} calls {function} directly; make it a layer "
                               "(nn.Conv2d, nn.AvgPool2d, ...) so the walk can read its kernel and stride")
    rf, jump, rows = 1, 1, []
    for call in trace.calls:
        layer = _layer_geometry(call, trace)
        if layer is None:
            continue
        kind, k, s, d, p = layer
        rows.append(RFLayer(call.name, kind, k, s, d, p, jump, rf + d * (k - 1) * jump, call.out_shape[-2]))
        rf, jump = rows[-1].rf, jump * s
    return rows


def _layer_geometry(call: Call, trace: Trace) -> tuple[str, int, int, int, int] | None:
    """(kind, kernel, stride, dilation, padding) of a layer that mixes pixels; None for one that does not."""
    m = call.module
    if isinstance(m, nn.Conv2d):
        kind = ("depthwise" if m.groups > 1 and m.groups == m.in_channels
                else "pointwise" if m.kernel_size == (1, 1) else "conv")
        return kind, _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation), _pair(m.padding)
    if isinstance(m, _POOLS):
        return (type(m).__name__, _pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                _pair(getattr(m, "dilation", 1)), _pair(m.padding))
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and call.out_shape[-2:] == (1, 1):
        return None  # global pooling: the classifier's input, after the last unit we measure
    if isinstance(m, nn.Identity) or type(m).__module__ in _PER_PIXEL:
        return None
    if not any(any(w in f for w in _SPATIAL) for f, owner, _ in trace.functions if owner == call.name):
        return None  # a custom layer that only does per-pixel arithmetic (a Swish, say)
    raise UnknownLayer(f"receptive field: cannot reason about layer {call.name!r} ({type(m).__name__}); "
                       "the walk reads nn.Conv2d, nn.MaxPool2d and nn.AvgPool2d, and per-pixel layers")


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
