"""What each traced operation does to the positions of a feature map.

An op either works on each position alone (BatchNorm, activations, adds, 1x1 convolutions), slides a window
over positions (a k x k convolution or pooling: kernel, stride, dilation), reduces every position of a map to
one value per channel (a global average or maximum), or leaves no positions behind (a flattened vector).
The rules and the receptive field read networks through these answers, so both judge the computation, not
its spelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifar_cli.errors import CifarError
from cifar_cli.graph import IMAGES, Graph, Op

GLOBAL_AVERAGE, GLOBAL_MAX = "global average", "global max"
PER_POSITION, NO_POSITIONS = "per position", "no positions"

# Operations that average or take the maximum over positions, however spelled. Division and multiplication
# count as an average only when they finish one (x.sum((2, 3)) / (h * w)); the values decide.
_AVERAGES = frozenset({"mean", "nanmean", "avg_pool2d", "adaptive_avg_pool2d", "avg_pool1d", "adaptive_avg_pool1d"})
_SCALINGS = frozenset({"div", "div_", "true_divide", "__truediv__", "mul", "mul_", "__mul__", "__rmul__"})
_MAXIMA = frozenset({"amax", "max", "max_pool2d", "adaptive_max_pool2d", "max_pool1d", "adaptive_max_pool1d"})
# Same-shape operations that move positions around rather than working on each one.
SHUFFLES = frozenset({"roll", "flip", "fliplr", "flipud", "rot90", "transpose", "permute", "swapaxes", "swapdims",
                       "movedim", "t"})
_CROPS = frozenset({"pad", "constant_pad_nd", "narrow", "__getitem__"})  # change the size, not what a unit sees
# Operations that mix or move positions in ways the walk does not model: it says so rather than guess.
_UNREAD = frozenset({"unfold", "fold", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
                     "grid_sample", "pixel_shuffle", "pixel_unshuffle", "conv_transpose2d", "conv_transpose1d",
                     "conv1d", "conv3d", "roll", "affine_grid"})


class UnknownLayer(CifarError):
    """An operation whose effect on positions cannot be worked out (upsampling, a transposed convolution...)."""


@dataclass(frozen=True)
class Window:
    """A window slid over positions: a k x k convolution or a pooling (heights; the networks here are square)."""

    kind: str  # "conv", "depthwise", "pointwise", "grouped", or the pooling's name ("max_pool2d", ...)
    kernel: int
    stride: int
    dilation: int
    padding: int | str


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution as called, whether by nn.Conv2d or F.conv2d."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int
    padding: int | str
    dilation: tuple[int, int]
    groups: int

    @property
    def depthwise(self) -> bool:
        """One filter group per input channel (a depth multiplier allowed) over a real window."""
        return self.groups > 1 and self.groups == self.in_channels and self.kernel != (1, 1)

    @property
    def pointwise(self) -> bool:
        """A 1x1 convolution that mixes all channels."""
        return self.kernel == (1, 1) and self.groups == 1

    @property
    def dilated(self) -> bool:
        """Dilation only spreads a kernel that has more than one tap."""
        return any(d > 1 and k > 1 for d, k in zip(self.dilation, self.kernel))

    @property
    def kind(self) -> str:
        return ("depthwise" if self.depthwise else "pointwise" if self.pointwise
                else "grouped" if self.groups > 1 else "conv")


def _first(value: object, default: int = 1) -> int:
    """The height component of an int-or-tuple argument."""
    if isinstance(value, (tuple, list)):
        return int(value[0]) if value else default
    return default if value is None else int(value)


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if value else (1, 1)
    return (int(value), int(value))


def conv_of(op: Op) -> Conv | None:
    if op.name != "conv2d" or not isinstance(op.arguments.get("weight"), tuple):
        return None
    weight = op.arguments["weight"]
    padding = op.arguments.get("padding", 0)
    return Conv(op.in_shape[1], weight[0], tuple(weight[-2:]), _first(op.arguments.get("stride", 1)),
                padding if isinstance(padding, str) else _first(padding, 0),
                _pair(op.arguments.get("dilation", 1)), int(op.arguments.get("groups", 1)))


def global_pooling(graph: Graph, op: Op) -> str | None:
    """GLOBAL_AVERAGE or GLOBAL_MAX when the op's output is, value for value, the average or the maximum
    of every position of the feature map upstream of it (for each image and channel); None otherwise.

    On a map that is already 1x1 only an explicit pooling op counts: a bare reshape averages nothing."""
    if op.name not in _AVERAGES | _SCALINGS | _MAXIMA or op.value is None:
        return None
    source = next((o for o in graph.single_input_chain(op) if o.is_map()), None)
    if source is None or source.position_mean is None:
        return None
    n, c, h, w = source.out_shape
    if op.value.numel() != n * c or (h * w == 1 and op.name in _SCALINGS):
        return None
    values = op.value.reshape(n, c).to(source.position_mean.dtype)
    summary, kind = ((source.position_max, GLOBAL_MAX) if op.name in _MAXIMA
                     else (source.position_mean, GLOBAL_AVERAGE))
    scale = float(summary.abs().max()) or 1.0
    return kind if torch.allclose(values, summary, rtol=1e-4, atol=1e-5 * scale) else None


def max_over_positions(graph: Graph, op: Op) -> bool:
    """A max-pooling of any kind: a pooling window, a global maximum, or a max over a map's spatial dims."""
    if "max_pool" in op.name or global_pooling(graph, op) == GLOBAL_MAX:
        return True
    if op.name not in ("amax", "max") or len(op.in_shape) != 4:
        return False
    dims = op.arguments.get("dim", op.arguments.get("1"))
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return any(isinstance(d, int) and d % 4 in (2, 3) for d in dims)


def window_of(op: Op) -> Window | None:
    """The window a convolution or a (non-global) pooling slides; None for any other op."""
    conv = conv_of(op)
    if conv is not None:
        return Window(conv.kind, conv.kernel[0], conv.stride, conv.dilation[0], conv.padding)
    if op.name in ("max_pool2d", "avg_pool2d", "lp_pool2d"):
        kernel = _first(op.arguments.get("kernel_size"))
        stride = op.arguments.get("stride")
        return Window(op.name, kernel, _first(stride) if stride not in (None, (), []) else kernel,
                      _first(op.arguments.get("dilation", 1)), _first(op.arguments.get("padding", 0), 0))
    step = _slice_step(op)
    if step > 1:  # x[:, :, ::2, ::2] keeps every second position, as a stride does
        return Window("subsample", 1, step, 1, 0)
    if op.name.startswith("adaptive_") and len(op.in_shape) == 4 and op.is_map():
        size_in, size_out = op.in_shape[-2], op.out_shape[-2]
        if size_in % size_out == 0:  # a fixed window when the map divides evenly
            return Window(op.name, size_in // size_out, size_in // size_out, 1, 0)
    return None


def _slice_step(op: Op) -> int:
    """The step of an index's slice over a map's height (x[:, :, ::2] or x[..., ::2, ::2]); 1 otherwise."""
    index = op.arguments.get("1")
    if op.name != "__getitem__" or len(op.in_shape) != 4 or not isinstance(index, tuple):
        return 1
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (4 - len(index) + 1) + index[at + 1:]
    height = index[2] if len(index) > 2 else None
    return int(height.step or 1) if isinstance(height, slice) else 1


def effect(graph: Graph, op: Op) -> Window | str:
    """What the op does to positions: a Window, GLOBAL_AVERAGE or GLOBAL_MAX, PER_POSITION, or NO_POSITIONS.

    Raises UnknownLayer for an op that resizes a map in a way the walk cannot read (upsampling...)."""
    if op.name in _UNREAD or op.name.startswith("upsample"):
        raise UnknownLayer(f"receptive field: cannot work out what {op.label!r} ({op.name}) does to positions; "
                           "the walk reads convolutions, pooling and per-position layers")
    found = global_pooling(graph, op)
    if found:
        return found
    window = window_of(op)
    if window is not None:
        return window
    if not op.is_map():
        return NO_POSITIONS
    maps = [graph.ops[i].out_shape for i in op.inputs if i != IMAGES and graph.ops[i].is_map()]
    maps += [op.in_shape] if IMAGES in op.inputs and len(op.in_shape) == 4 else []
    sizes = {shape[-2:] for shape in maps}
    if not maps:
        return NO_POSITIONS  # a vector made into a 1x1 map again (a squeeze-excitation gate): no positions
    if op.name in _CROPS or op.name in SHUFFLES or op.out_shape[-2:] == max(sizes):
        return PER_POSITION  # a permutation of axes (channels-last and back) moves no unit's view
    raise UnknownLayer(f"receptive field: cannot work out what {op.label!r} ({op.name}) does to positions "
                       f"(it makes a {op.out_shape[-2]}x{op.out_shape[-1]} map from {max(sizes)[0]}x{max(sizes)[1]})")
