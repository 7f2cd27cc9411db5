"""Held-out accuracy of a run's final weights after re-estimating BatchNorm's statistics.

Training leaves BatchNorm's running statistics measured on augmented images, while evaluation feeds
clean ones. This re-estimates them (an exact average, not a running one) on N of the run's training
images, clean or through the run's training pipeline, and scores the run's held-out images with and without
flip TTA, beside the weights as saved. The test set is not used: this is for choosing defaults.

    python experiments/bn_recalibration.py RUN/last.safetensors --data-dir DIR [--images N] [--augmented]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_cli.augment import BatchAugmenter, train_pipeline
from cifar_cli.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_cli.data import eval_split
from cifar_cli.errors import CifarError
from cifar_cli.run_state import settings_of
from cifar_cli.training.evaluation import evaluate, to_device

CPU = torch.device("cpu")


@torch.no_grad()
def recalibrated(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics are the exact mean and variance over `images` (uint8 NHWC)."""
    model = copy.deepcopy(model).train()  # train mode: BatchNorm measures; no dropout in eval afterwards
    for layer in model.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over every batch, not an exponential one
    for start in range(0, len(images), batch_size):
        model(to_device(torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2), CPU))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=10_000, help="training images to measure on")
    parser.add_argument("--augmented", action="store_true", help="through the training pipeline (seed 0)")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    settings = settings_of(ckpt)
    try:
        held, learned = (eval_split(args.data_dir, which, settings.val_split) for which in ("held-out", "train"))
    except CifarError as e:  # a run that held nothing out
        raise SystemExit(f"error: {e}") from None
    chosen = np.random.default_rng(0).permutation(len(learned))[:args.images]
    images = learned.images[chosen]
    if args.augmented:
        images = BatchAugmenter(train_pipeline(odds=settings.augment_odds))(images, seed=0)  # as the run had it
    saved = model_from_checkpoint(ckpt)
    kind = "augmented" if args.augmented else "clean"
    for name, model in (("as saved", saved), (f"{len(images):,} {kind} images", recalibrated(saved, images))):
        scores = [100 * evaluate(model, held, CPU, tta=tta).accuracy for tta in (False, True)]
        print(f"{name:<28} no TTA {scores[0]:6.2f}%   flip TTA {scores[1]:6.2f}%", flush=True)


if __name__ == "__main__":
    main()
