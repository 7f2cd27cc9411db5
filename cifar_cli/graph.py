"""A network's forward pass as a dataflow graph of the torch operations it ran.

One eval-mode forward pass is watched at the level networks are written in: every torch function, functional
call and tensor method (`F.conv2d` inside `nn.Conv2d`, `x.mean((2, 3))`, `x + y`) becomes an `Op` whose inputs
are the ops that produced its image-derived arguments. A module, its functional spelling and a tensor method
look the same here, so the rules can judge what a network computes rather than how it is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

IMAGES = -1  # the index that stands for the input images among an op's inputs

# Positional parameter names of the operations whose geometry is read from their arguments.
_SIGNATURES = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "lp_pool2d": ("input", "norm_type", "kernel_size", "stride", "ceil_mode"),
    "adaptive_avg_pool2d": ("input", "output_size"),
    "adaptive_max_pool2d": ("input", "output_size", "return_indices"),
}
_KEEP = 4096  # per image: outputs at most this size are kept whole (a pooled vector), larger ones summarised


@dataclass(frozen=True)
class Layer:
    """One leaf module as the forward pass met it (what Grad-CAM and the layer table name)."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass(eq=False)
class Op:
    """One torch operation that took image-derived data.

    `arguments` holds what it was called with, tensors replaced by their shapes (by parameter name for the
    operations in _SIGNATURES). For a feature map (N x C x H x W) output, `position_mean` and `position_max`
    (N x C) summarise it as it was when the op returned, before any in-place op changed it.
    """

    index: int
    name: str  # the torch function: "conv2d", "mean", "add", ...
    owner: str  # the module whose forward called it; "" for the network's own forward
    in_layer: bool  # the owner is a leaf module (nn.Conv2d, nn.ReLU, ...): the op is that layer
    inputs: tuple[int, ...]  # the ops that produced its image-derived arguments (IMAGES for the images)
    arguments: dict[str, object]
    out_shape: tuple[int, ...]
    label: str = ""
    value: torch.Tensor | None = None  # the output itself, when small
    position_mean: torch.Tensor | None = None
    position_max: torch.Tensor | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        shape = self.arguments.get("input", self.arguments.get("0"))
        return shape if isinstance(shape, tuple) else ()

    def is_map(self) -> bool:
        """Its output is a feature map: N x C x H x W."""
        return len(self.out_shape) == 4


@dataclass
class Graph:
    ops: list[Op] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    output: int | None = None  # the op that produced the network's output (None: not derived from the images)
    kept: torch.Tensor | None = None  # the output of the op trace_graph was asked to keep

    def consumers(self) -> dict[int, list[int]]:
        """For each op (and IMAGES), the ops that take its output."""
        found: dict[int, list[int]] = {IMAGES: []}
        for op in self.ops:
            found.setdefault(op.index, [])
            for i in op.inputs:
                found[i].append(op.index)
        return found

    def ancestors(self, index: int) -> set[int]:
        """The op and every op upstream of it."""
        found, frontier = {index}, [index]
        while frontier:
            for i in self.ops[frontier.pop()].inputs:
                if i != IMAGES and i not in found:
                    found.add(i)
                    frontier.append(i)
        return found

    def single_input_chain(self, op: Op, steps: int = 6) -> list[Op]:
        """The ops upstream of `op` along single-input ops, nearest first (a pooled vector back to its map)."""
        chain = []
        while len(op.inputs) == 1 and op.inputs[0] != IMAGES and len(chain) < steps:
            op = self.ops[op.inputs[0]]
            chain.append(op)
        return chain


class _Stop(Exception):  # noqa: N818 - not an error: the kept op has run, the rest of the pass is not needed
    pass


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, images: torch.Tensor, keep: int | None):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.modules = dict(model.named_modules())
        self.graph, self.running, self.keep = Graph(), [""], keep
        self.producer: dict[int, int] = {id(images): IMAGES}
        self.alive: list[torch.Tensor] = [images]  # ids stay unique while the tensors live

    def enter(self, module: nn.Module, inputs: tuple) -> None:
        self.running.append(self.names.get(module, "?"))

    def leave(self, module: nn.Module, inputs: tuple, output: object) -> None:
        self.running.pop()
        if not list(module.children()) and isinstance(output, torch.Tensor) and inputs \
                and isinstance(inputs[0], torch.Tensor):
            self.graph.layers.append(Layer(self.names.get(module, "?"), module, tuple(inputs[0].shape),
                                           tuple(output.shape)))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        sources = [self.producer[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.producer]
        outputs = _tensors(result)
        if sources and outputs:
            self._record(getattr(func, "__name__", str(func)), args, kwargs, sources, outputs)
        return result

    def _record(self, name: str, args: tuple, kwargs: dict, sources: list[int], outputs: list) -> None:
        owner = self.running[-1]
        module = self.modules.get(owner) if owner else None
        first = outputs[0]
        op = Op(len(self.graph.ops), name, owner, module is not None and not list(module.children()),
                tuple(dict.fromkeys(sources)), _arguments(name, args, kwargs), tuple(first.shape))
        with torch.no_grad():
            detached = first.detach()
            if detached.ndim >= 1 and detached[0].numel() <= _KEEP:
                op.value = detached.clone()
            if op.is_map() and detached.is_floating_point() and detached.shape[-2] * detached.shape[-1] > 0:
                op.position_mean = detached.mean((2, 3))
                op.position_max = detached.amax((2, 3))
        self.graph.ops.append(op)
        for t in outputs:
            self.producer[id(t)] = op.index
            self.alive.append(t)
        if op.index == self.keep:
            self.graph.kept = first
            raise _Stop


def _tensors(value: object) -> list[torch.Tensor]:
    """The tensors in a (nested) value; torch.max's (values, indices) result included."""
    found = []
    for leaf in tree_flatten(value)[0]:
        if isinstance(leaf, torch.Tensor):
            found.append(leaf)
        elif isinstance(leaf, tuple):
            found.extend(_tensors(list(leaf)))
    return found


def _arguments(name: str, args: tuple, kwargs: dict) -> dict[str, object]:
    """The call's arguments by name where the op is known, else by position; tensors become their shapes."""
    def plain(value: object) -> object:
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
        return type(value)(plain(v) for v in value) if type(value) in (list, tuple) else value
    names = _SIGNATURES.get(name, ())
    found = {(names[i] if i < len(names) else str(i)): plain(a) for i, a in enumerate(args)}
    found.update({k: plain(v) for k, v in kwargs.items()})
    return found


def _label_ops(graph: Graph) -> None:
    """A layer's op is named by the layer ("c2.0.1"); any other op by where and what ("c1: relu"), numbered
    when one forward calls the same function more than once ("c2.0: conv2d #2")."""
    calls: dict[tuple[str, str], int] = {}
    for op in graph.ops:
        calls[op.owner, op.name] = calls.get((op.owner, op.name), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for op in graph.ops:
        key = (op.owner, op.name)
        seen[key] = seen.get(key, 0) + 1
        if op.in_layer and calls[key] == 1:
            op.label = op.owner
        else:
            op.label = f"{op.owner or 'forward'}: {op.name}" + (f" #{seen[key]}" if seen[key] > 1 else "")


def trace_graph(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32), images: torch.Tensor | None = None,
                keep: int | None = None) -> Graph:
    """Run one eval-mode forward pass and record the graph of what ran.

    By default on two seeded random images without gradients (two, because networks that squeeze their
    output break on one). With `images` the pass keeps gradients, and `keep` stops it after that op,
    keeping its output in `graph.kept` (the empirical receptive field differentiates through it).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if images is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(2, *input_size, generator=generator).to(device, dtype)
    recorder = _Recorder(model, images, keep)
    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(recorder.enter), m.register_forward_hook(recorder.leave))]
    was_training = model.training
    try:
        model.eval()
        with torch.set_grad_enabled(keep is not None), recorder:
            output = model(images)
        flat = _tensors(output)
        recorder.graph.output = recorder.producer.get(id(flat[0])) if flat else None
    except _Stop:
        pass
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    _label_ops(recorder.graph)
    return recorder.graph
