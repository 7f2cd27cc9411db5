"""Make the checkpoint that ships inside the package from a run's last.safetensors.

    python scripts/package_checkpoint.py RUN/last.safetensors --data-dir DIR

Keeps the weights and drops what only resuming needs (optimizer, run state, raw weights); measures
the weights on the official test set with the default flip TTA and writes that figure, with the number
of test images, into the metadata, so `cifar eval` with no path prints exactly what the file claims;
the figure without TTA goes in too (`test_acc_no_tta`), for `cifar eval --no-tta`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from cifar_cli.checkpoint import (
    PACKAGED_CHECKPOINT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    weights_only,
)
from cifar_cli.data import load_split
from cifar_cli.settings import DEFAULTS
from cifar_cli.training.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=PACKAGED_CHECKPOINT)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    test = load_split(args.data_dir, train=False)
    model = model_from_checkpoint(ckpt)
    result, plain = (evaluate(model, test, torch.device("cpu"), classes=ckpt.classes, mean=ckpt.mean, std=ckpt.std,
                              tta=tta) for tta in (DEFAULTS.tta, False))
    metrics = {**ckpt.metrics, "test_acc": result.accuracy, "test_loss": result.loss, "test_images": len(test),
               "test_acc_no_tta": plain.accuracy}
    args.out.parent.mkdir(parents=True, exist_ok=True)  # replacing the shipped file starts from `git rm`
    save_checkpoint(args.out, replace(weights_only(ckpt), metrics=metrics))
    print(f"{args.out}: {ckpt.model.describe()}, epoch {ckpt.epoch}, test accuracy {100 * result.accuracy:.2f}% "
          f"on {len(test):,} images (flip TTA {'on' if DEFAULTS.tta else 'off'}), "
          f"{100 * plain.accuracy:.2f}% without TTA")


if __name__ == "__main__":
    main()
