"""A second copy of the weights kept beside the trained ones (--ema's average, --lookahead's slow weights):
what is evaluated and saved. Each depends only on the run's step count, so a resumed run keeps it exactly
as an uninterrupted one would have.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cifar_cli.settings import TrainSettings


class ShadowWeights:
    """A second copy of a network's weights and BatchNorm statistics, kept beside the trained one; it is
    what is evaluated and saved, and the trained weights stay in last.safetensors for --resume."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        pairs = list(zip(model.state_dict().values(), self.model.state_dict().values()))
        self._sources = [s for s, _ in pairs if s.is_floating_point()]
        self._targets = [t for s, t in pairs if s.is_floating_point()]
        # BatchNorm's batch counts, copied as they are
        self._counter_sources = [s for s, _ in pairs if not s.is_floating_point()]
        self._counter_targets = [t for s, t in pairs if not s.is_floating_point()]

    def update(self, steps_done: int) -> None:
        """Called after every optimizer step with the run's step count so far."""
        raise NotImplementedError

    def _pull(self, decay: float) -> None:
        """Move the copy toward the trained weights by 1 - decay."""
        # One multi-tensor launch each, not one per tensor.
        torch._foreach_lerp_(self._targets, self._sources, 1 - decay)
        if self._counter_targets:
            torch._foreach_copy_(self._counter_targets, self._counter_sources)


class WeightAverage(ShadowWeights):
    """An exponential moving average of a network's weights and BatchNorm statistics, after every step.

    The decay warms up as (1 + n) / (10 + n) so the early, random weights are forgotten quickly. It
    depends only on the step count n, so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model)
        self.decay = decay

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        self._pull(min(self.decay, (1 + steps_done) / (10 + steps_done)))


class Lookahead(ShadowWeights):
    """Slow weights that the trained ones restart from every SYNC_EVERY steps (airbench's lookahead).

    At each sync the slow weights move toward the trained ones, keeping `decay`**SYNC_EVERY * progress**3
    of themselves, and training goes on from them. So each sync keeps only part of the last few steps'
    progress: late in the run this averages away step noise and slows the descent, while the cube leaves
    the fast early run untouched. The last step always syncs, so a run ends with both copies equal. Like
    WeightAverage, it depends only on the step count.
    """

    SYNC_EVERY = 5

    def __init__(self, model: nn.Module, decay: float, total_steps: int):
        super().__init__(model)
        self.decay, self.total_steps = decay, total_steps

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        if steps_done % self.SYNC_EVERY and steps_done != self.total_steps:
            return
        self._pull(self.decay ** self.SYNC_EVERY * (steps_done / self.total_steps) ** 3)
        torch._foreach_copy_(self._sources, self._targets)


def shadow_weights(model: nn.Module, settings: TrainSettings, total_steps: int) -> ShadowWeights | None:
    """The run's second copy of the weights, if its settings ask for one (--ema or --lookahead)."""
    if settings.ema:
        return WeightAverage(model, settings.ema)
    if settings.lookahead:
        return Lookahead(model, settings.lookahead, total_steps)
    return None
