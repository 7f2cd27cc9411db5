"""A network's answers: loss, accuracy and confusion on a split (`evaluate`), class probabilities for images
(`predict`), and the two things every forward pass here shares, the batch put on the device (`to_device`)
and autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar_cli.augment import normalize
from cifar_cli.checkpoint import NonFinite
from cifar_cli.data import CLASSES, MEAN, STD, Split, batches_in_order
from cifar_cli.records import EvalResult
from cifar_cli.runtime import eval_batch_size, memory_format
from cifar_cli.terminal import counted


class EvaluationStopped(Exception):
    """A stop signal arrived while an epoch's network was being evaluated: the evaluation is abandoned, so
    that the stop is quick (under torchrun the launcher kills processes that take long to stop)."""


def to_device(images: torch.Tensor, device: torch.device, mean: tuple[float, ...] = MEAN,
              std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 N x 3 x H x W (any layout) -> normalised float on `device`, in the network's memory format."""
    images = images.to(device, non_blocking=True)
    return normalize(images, mean, std).contiguous(memory_format=memory_format(device))


@dataclass(frozen=True)
class DeviceSplit:
    """A split kept on the device for the whole run: uint8 N x 3 x H x W images (channels_last) and labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def resident(split: Split | None, device: torch.device) -> Split | DeviceSplit | None:
    """On CUDA, `split` uploaded once (from pinned memory) to be evaluated every epoch without copies;
    elsewhere the split itself, read batch by batch."""
    if split is None or device.type != "cuda":
        return split
    images = torch.from_numpy(split.images).pin_memory().to(device, non_blocking=True)
    labels = torch.from_numpy(split.labels).pin_memory().to(device, non_blocking=True)
    return DeviceSplit(images.permute(0, 3, 1, 2), labels)


def _in_order(split: Split | DeviceSplit, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(split, DeviceSplit):
        for start in range(0, len(split), batch_size):
            yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
    else:
        yield from batches_in_order(split, batch_size)


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def logits_of(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """The network's logits for a normalised batch, in float32; with `tta`, averaged with its mirror image's
    (the one way every prediction here, and the exported ONNX model, applies flip TTA)."""
    logits = model(x).float()
    if tta:  # the network trained on mirrored images too, so the mirror image is a second opinion
        logits = (logits + model(x.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, split: Split | DeviceSplit, device: torch.device, batch_size: int | None = None,
             classes: tuple[str, ...] = CLASSES, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
             amp_dtype: torch.dtype | None = None, tta: bool = False, name: str = "the network",
             stopping: Callable[[], bool] | None = None, progress: Callable[[int], None] | None = None
             ) -> EvalResult:
    """Loss, accuracy and confusion matrix; with `tta`, logits are averaged over each image and its mirror.

    A non-finite loss is no result (a NaN network "scores" chance accuracy): NonFinite, naming `name`.
    `stopping`, asked before each batch, abandons the evaluation (EvaluationStopped) once it says so;
    `progress` is told after each batch how many images are done.
    `batch_size` None: eval_batch_size. Nothing waits on the device until the end: the confusion matrix is
    counted into fixed bins (torch.bincount would read the labels' range back to the host every batch).
    """
    if isinstance(split, Split):
        split = resident(split, device)
    was_training = model.training
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    ones = torch.ones(0, dtype=torch.int64, device=device)
    done = 0
    try:
        for images, labels in _in_order(split, batch_size or eval_batch_size(device)):
            if stopping is not None and stopping():
                raise EvaluationStopped
            labels = labels.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = logits_of(model, to_device(images, device, mean, std), tta)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            if len(ones) != len(labels):
                ones = torch.ones(len(labels), dtype=torch.int64, device=device)
            confusion.index_add_(0, labels * n + logits.argmax(1), ones)
            if progress is not None:
                done += len(labels)
                progress(done)
    finally:
        model.train(was_training)
    total = max(len(split), 1)
    loss, counts = _read_back(loss_sum, confusion)
    if not math.isfinite(loss):
        raise NonFinite(f"{name} gives NaN or infinite logits for some of these {counted(len(split), 'image')}; its "
                        "accuracy would mean nothing")
    matrix = counts.view(n, n)
    return EvalResult(loss=loss / total, accuracy=matrix.diag().sum().item() / total,
                      confusion=matrix.tolist(), classes=classes)


def _read_back(loss_sum: torch.Tensor, confusion: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The loss sum and the counts, read from the device in one copy (the evaluation's one wait). float64
    holds the float32 sum and every count below 2**53 exactly."""
    both = torch.cat([loss_sum.double().view(1), confusion.double()]).cpu()
    return both[0].item(), both[1:].long()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, mean: tuple[float, ...] = MEAN,
            std: tuple[float, ...] = STD, tta: bool = False, batch_size: int | None = None,
            amp_dtype: torch.dtype | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities (N x classes) for uint8 N x H x W x 3 RGB images; `progress` is told after each
    batch how many images are done."""
    model.eval()
    parts = []
    batch_size = batch_size or eval_batch_size(device)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        with autocast(device, amp_dtype):
            logits = logits_of(model, to_device(chunk, device, mean, std), tta)
        parts.append(logits.softmax(1).cpu())
        if progress is not None:
            progress(start + len(chunk))
    return torch.cat(parts)
