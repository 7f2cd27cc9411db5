"""A network's answers: loss, accuracy and confusion on a split (`evaluate`), class probabilities for images
(`predict`), and the two things every forward pass here shares, the batch put on the device (`to_device`)
and autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar_cli.augment import normalize
from cifar_cli.checkpoint import NonFinite
from cifar_cli.data import CLASSES, MEAN, STD, Split, batches_in_order
from cifar_cli.records import EvalResult
from cifar_cli.runtime import memory_format
from cifar_cli.settings import EVAL_BATCH_SIZE
from cifar_cli.terminal import counted


class EvaluationStopped(Exception):
    """A stop signal arrived while an epoch's network was being evaluated: the evaluation is abandoned, so
    that the stop is quick (under torchrun the launcher kills processes that take long to stop)."""


def to_device(images: torch.Tensor, device: torch.device, mean: tuple[float, ...] = MEAN,
              std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 N x 3 x H x W (any layout) -> normalised float on `device`, in the network's memory format."""
    images = images.to(device, non_blocking=True)
    return normalize(images, mean, std).contiguous(memory_format=memory_format(device))


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _logits(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    logits = model(x).float()
    if tta:  # the network trained on mirrored images too, so the mirror image is a second opinion
        logits = (logits + model(x.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = EVAL_BATCH_SIZE,
             classes: tuple[str, ...] = CLASSES, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
             amp_dtype: torch.dtype | None = None, tta: bool = False, name: str = "the network",
             stopping: Callable[[], bool] | None = None, progress: Callable[[int], None] | None = None
             ) -> EvalResult:
    """Loss, accuracy and confusion matrix; with `tta`, logits are averaged over each image and its mirror.

    A non-finite loss is no result (a NaN network "scores" chance accuracy): NonFinite, naming `name`.
    `stopping`, asked before each batch, abandons the evaluation (EvaluationStopped) once it says so;
    `progress` is told after each batch how many images are done.
    """
    was_training = model.training
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    done = 0
    try:
        for images, labels in batches_in_order(split, batch_size):
            if stopping is not None and stopping():
                raise EvaluationStopped
            labels = labels.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = _logits(model, to_device(images, device, mean, std), tta)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            confusion += torch.bincount(labels * n + logits.argmax(1), minlength=n * n)
            if progress is not None:
                done += len(labels)
                progress(done)
    finally:
        model.train(was_training)
    total = max(len(split), 1)
    if not torch.isfinite(loss_sum).item():
        raise NonFinite(f"{name} gives NaN or infinite logits for some of these {counted(len(split), 'image')}; its "
                        "accuracy would mean nothing")
    matrix = confusion.view(n, n).cpu()
    return EvalResult(loss=loss_sum.item() / total, accuracy=matrix.diag().sum().item() / total,
                      confusion=matrix.tolist(), classes=classes)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, mean: tuple[float, ...] = MEAN,
            std: tuple[float, ...] = STD, tta: bool = False, batch_size: int = EVAL_BATCH_SIZE,
            progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities (N x classes) for uint8 N x H x W x 3 RGB images; `progress` is told after each
    batch how many images are done."""
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        parts.append(_logits(model, to_device(chunk, device, mean, std), tta).softmax(1).cpu())
        if progress is not None:
            progress(start + len(chunk))
    return torch.cat(parts)
