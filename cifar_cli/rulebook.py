"""The assignment's design rules: each one's name, what it means, and how to fix a network that breaks it.

Stated once, here: `cifar summary --help` and docs/rules.md show these words, and `rules.py` judges by
them. Kept free of torch so that help is instant.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PARAMS = 200_000
MIN_RECEPTIVE_FIELD = 44  # strictly greater than this


@dataclass(frozen=True)
class RuleText:
    name: str
    meaning: str
    fix: str  # the general fix; a check may say something more precise for what it found


PARAMETERS = RuleText(
    "parameters < 200,000",
    "every parameter the network holds, shared ones counted once, used in the forward pass or not",
    "make the widest layers narrower or depthwise-separable (about 1/8 the weights of a 3x3 convolution)")
NO_MAX_POOLING = RuleText(
    "no max-pooling",
    "no operation takes a maximum over positions: no max-pooling window, no global max (nn.AdaptiveMaxPool2d, "
    "x.amax((2, 3))); a maximum over channels is not pooling",
    "downsample with a stride-2 convolution (or widen the view with a dilated one) instead of max-pooling")
SEPARABLE = RuleText(
    ">= 1 depthwise-separable conv",
    "a depthwise convolution (groups = in_channels, kernel over 1x1, a depth multiplier allowed) whose output "
    "reaches a pointwise 1x1 convolution (groups=1) through per-pixel layers only (BatchNorm, activations, dropout)",
    "follow a depthwise nn.Conv2d(c, c, 3, padding=1, groups=c) with a pointwise nn.Conv2d(c, out, 1) "
    "(BatchNorm and ReLU between them are fine)")
DILATED = RuleText(
    ">= 1 dilated conv",
    "a convolution with dilation > 1 and a kernel larger than 1x1 (a dilated 1x1 is the same as an undilated one)",
    "give a 3x3 convolution dilation=2 (padding=2 keeps the map's size)")
GLOBAL_AVERAGE = RuleText(
    "global average pooling before the classifier",
    "every path from the image to the output passes through an average over all positions of a feature map "
    "(nn.AdaptiveAvgPool2d(1), nn.AvgPool2d(map size), F.adaptive_avg_pool2d, x.mean((2, 3)), ...), after "
    "which only per-position layers remain (linear, 1x1 convolution, view, dropout, (log-)softmax)",
    "average the last feature map over all its positions before the classifier: nn.AdaptiveAvgPool2d(1) "
    "(or x.mean((2, 3)))")
BATCHNORM = RuleText(
    "BatchNorm",
    "at least one batch normalisation of a feature map (nn.BatchNorm2d or F.batch_norm on N x C x H x W); "
    "GroupNorm, LayerNorm and BatchNorm1d after the pooling do not count",
    "add nn.BatchNorm2d(channels) after each convolution, before its activation")
BLOCKS = RuleText(
    "blocks C1 C2 C3 C4",
    "the convolutions are organised as four blocks that run one after another: modules named c1..c4 (any case), "
    "four numbered containers (convblock1..4, layer1..4), a Sequential of four stages, or the modules a class "
    "attribute blocks = (...) lists; each runs a convolution and together they hold at least half of them",
    'name your four blocks c1, c2, c3, c4 (self.c1 = nn.Sequential(...)), or list them in a class attribute: '
    'blocks = ("first", "second", "third", "fourth")')
RECEPTIVE_FIELD = RuleText(
    f"receptive field > {MIN_RECEPTIVE_FIELD}",
    "the widest view, in input pixels, of any feature map unit before the global pooling, along the longest "
    "path: each window adds dilation x (kernel - 1) x jump, each stride multiplies the jump",
    "widen the view: dilate a 3x3 convolution, or downsample earlier with a stride-2 convolution so later "
    "layers see more")

RULES = (PARAMETERS, NO_MAX_POOLING, SEPARABLE, DILATED, GLOBAL_AVERAGE, BATCHNORM, BLOCKS, RECEPTIVE_FIELD)
