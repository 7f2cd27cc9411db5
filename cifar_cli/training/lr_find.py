"""The learning-rate range test (`cifar lr-find`): from fresh weights, the real training step at a rising lr,
and what its loss curve suggests as the one-cycle peak. It trains; it writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from cifar_cli.data import Split
from cifar_cli.errors import CifarError
from cifar_cli.models import ModelSpec
from cifar_cli.runtime import Distributed, Runtime
from cifar_cli.settings import MAX_LR, TrainSettings
from cifar_cli.training.loop import train_step
from cifar_cli.training.trainer import build_trainer

MAX_STEPS = 100_000  # a range test of more mini-batches than this is a typo (200 is the usual)
MIN_START_LR = 1e-10  # a step this small moves no float32 weight of ordinary size: lower only wastes steps
REAL_FALL = 0.1  # a fall of the smoothed loss by a tenth of where it began is learning, not noise
MIN_FALL_STEPS = 3  # fewer mini-batches before the lowest loss are no stretch to judge a fall by


@dataclass(frozen=True)
class LrFinding:
    lrs: list[float]
    losses: list[float]  # raw loss of each mini-batch
    smoothed: list[float]  # exponentially smoothed, bias-corrected
    suggestion: float | None  # None when the curve shows no falling stretch to suggest from
    lowest: float  # the lr at the lowest smoothed loss
    diverged_at: float | None  # the lr at which the loss exploded, if it did
    how: str  # how the suggestion was chosen, or why there is none and what to try, in words


def check_lr_range(start: float, end: float, steps: int) -> None:
    """A range the test can run: finite, rising, from MIN_START_LR up to MAX_LR (so the ratio of its ends,
    at most 1e16, and every lr on the way are ordinary floats), over 2 to MAX_STEPS mini-batches."""
    if not MIN_START_LR <= start < end <= MAX_LR:  # also refuses nan and infinity
        raise CifarError(f"--start must be below --end, both from {MIN_START_LR:g} to {MAX_LR:g} "
                         f"(got {start:g} and {end:g})")
    if not 2 <= steps <= MAX_STEPS:
        raise CifarError(f"--steps must be between 2 and {MAX_STEPS:,}, not {steps}")


def lr_schedule(start: float, end: float, steps: int) -> list[float]:
    """`steps` learning rates growing by one factor from `start` to `end`, computed in log space, so that no
    power of the factor is ever formed (it overflows for wide ranges)."""
    check_lr_range(start, end, steps)
    return np.geomspace(start, end, steps).tolist()


def lr_range_test(settings: TrainSettings, spec: ModelSpec, train_split: Split, device: torch.device,
                  start: float, end: float, steps: int, runtime: Runtime | None = None,
                  progress: Callable[[int], None] | None = None) -> LrFinding:
    """From fresh weights, raise the lr exponentially from `start` to `end` over `steps` mini-batches of
    the real training pipeline (same augmentation, optimizer and weight-decay groups as train), stopping
    when the smoothed loss explodes; `progress` is told after each mini-batch how many are done. Writes
    nothing."""
    lrs_planned = lr_schedule(start, end, steps)
    settings = replace(settings, lr=start, ema=0.0, lookahead=0.0, val_split=0)
    # the scheduler also asks for the lr after the last step: it stays at `end`
    trainer = build_trainer(settings, spec, train_split, device, runtime or Runtime(), Distributed(),
                            schedule=lambda opt, _: torch.optim.lr_scheduler.LambdaLR(
                                opt, lambda i: lrs_planned[min(i, steps - 1)] / start))
    lrs, losses = [], []
    epoch = 0
    while len(lrs) < steps:
        epoch += 1
        trainer.plan.set_epoch(epoch)
        for step, (images, labels) in enumerate(trainer.loader, start=1):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
            losses.append(train_step(trainer, images, labels, epoch, step)[0].item())
            if progress is not None:
                progress(len(losses))
            if len(lrs) >= steps or _exploded(losses):
                return finding_from(lrs, losses)
    return finding_from(lrs, losses)


def _smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * (loss if math.isfinite(loss) else 1e9)
        out.append(average / (1 - beta**i))
    return out


def _exploded(losses: list[float]) -> bool:
    """Non-finite, or 4x its lowest, or back above where it started after a real (10%) fall: past that
    point the network is worse than untrained. (With BatchNorm and label smoothing a blown-up network's
    loss stays near chance rather than running off to infinity.)"""
    s = _smooth(losses)
    climbed_back = s[-1] > s[0] and s[0] - min(s) > REAL_FALL * s[0]
    return not math.isfinite(losses[-1]) or (len(s) > 5 and (s[-1] > 4 * min(s) or climbed_back))


def finding_from(lrs: list[float], losses: list[float]) -> LrFinding:
    """What a range test's curve says: one tenth of the lr at the lowest smoothed loss, as the one-cycle
    peak, but only where the loss first fell for real (by REAL_FALL over MIN_FALL_STEPS or more mini-batches);
    otherwise no suggestion, and why."""
    smoothed = _smooth(losses)
    best = int(np.argmin(smoothed))
    diverged = lrs[-1] if _exploded(losses) else None
    fell = best >= MIN_FALL_STEPS and smoothed[0] - smoothed[best] > REAL_FALL * smoothed[0]
    if fell:
        suggestion = max(lrs[best] / 10, lrs[0])
        how = f"one tenth of the lr at the lowest smoothed loss ({lrs[best]:.3g}), where the loss still falls steadily"
    elif diverged is not None:
        suggestion, how = None, (f"the loss exploded at lr {diverged:.3g} before it fell by "
                                 f"{REAL_FALL:.0%}; lower --start")
    else:
        suggestion, how = None, (f"the loss never fell by {REAL_FALL:.0%} up to lr {lrs[-1]:.3g}; "
                                 "raise --end or --steps")
    return LrFinding(lrs, losses, smoothed, suggestion=suggestion, lowest=lrs[best], diverged_at=diverged, how=how)
