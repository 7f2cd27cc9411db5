"""Throughput of cifar-cli's training path, and one epoch of it against a seed-style baseline.

    python benchmarks/bench.py --data-dir DIR [--device cpu] [--json]

Prints a table (or JSON) of:
  1. augmentation pipeline images/s in one process (ours: uint8 per batch; seed: per image + Normalize);
  2. data loader images/s with 0, 1, 2, ... workers;
  3. training step images/s (forward + backward + step) of the default network;
  4. one full epoch (train + test evaluation) of `cifar train`'s loop vs a seed-style baseline on the
     same model, data and machine: a plain Dataset applying Albumentations per item, a default
     DataLoader, fp32, contiguous memory, per-batch .item() and tqdm-style printing. And the ratio.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from cifar_cli.augment import BatchAugmenter, train_pipeline
from cifar_cli.data import MEAN, STD, AugmentedBatches, EpochBatches, Split, load_split
from cifar_cli.models import ModelSpec, create_model, preset_spec
from cifar_cli.runtime import Runtime, memory_format, resolve_device
from cifar_cli.settings import DEFAULTS, TrainSettings
from cifar_cli.training.evaluation import autocast, to_device
from cifar_cli.training.loop import train
from cifar_cli.training.trainer import sgd

CV2_DEFAULT_THREADS = cv2.getNumThreads()


# --- the seed-style baseline: how such projects usually start ----------------------------------------

def seed_pipeline(train: bool) -> A.Compose:
    """The same augmentations, applied the usual way: per image, Normalize and ToTensorV2 included."""
    augment = list(train_pipeline(DEFAULTS.augment_odds).transforms) if train else []
    return A.Compose([*augment, A.Normalize(mean=MEAN, std=STD), ToTensorV2()])


class SeedDataset(Dataset):
    def __init__(self, split: Split, transform: A.Compose):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.split.images[i])["image"], int(self.split.labels[i])


def seed_epoch(train_split: Split, test_split: Split, device: torch.device, settings: TrainSettings) -> float:
    """One epoch of a typical first training script; returns its seconds."""
    torch.manual_seed(settings.seed)
    model = create_model(preset_spec()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, nesterov=True,
                                weight_decay=settings.weight_decay)
    loader = DataLoader(SeedDataset(train_split, seed_pipeline(True)), batch_size=settings.batch_size, shuffle=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=len(loader))
    cv2.setNumThreads(CV2_DEFAULT_THREADS)  # as OpenCV comes, not as cifar-cli sets it
    started = time.perf_counter()
    model.train()
    running, correct, seen = 0.0, 0, 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item() * len(y)  # a host sync every step
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        sys.stderr.write(f"\rbaseline {i + 1}/{len(loader)} loss {running / seen:.4f} acc {correct / seen:.3f}")
    sys.stderr.write("\n")
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(SeedDataset(test_split, seed_pipeline(False)), batch_size=settings.batch_size):
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return time.perf_counter() - started


# --- measurements ------------------------------------------------------------------------------------

def augmentation_rate(split: Split, n: int) -> dict[str, float]:
    images = split.images[:n]
    ours = BatchAugmenter(train_pipeline(DEFAULTS.augment_odds))
    started = time.perf_counter()
    for b in range(0, n, 128):
        ours(images[b:b + 128], b)
    ours_rate = n / (time.perf_counter() - started)
    cv2.setNumThreads(CV2_DEFAULT_THREADS)  # the baseline runs as OpenCV comes
    seed = seed_pipeline(True)
    started = time.perf_counter()
    for image in images:
        seed(image=image)
    return {"ours": ours_rate, "seed": n / (time.perf_counter() - started)}


def loader_rate(split: Split, workers: int, batches: int) -> float:
    plan = EpochBatches(len(split), 128, seed=0, odds=DEFAULTS.augment_odds)
    augment = BatchAugmenter(train_pipeline(DEFAULTS.augment_odds))
    loader = DataLoader(AugmentedBatches(split, augment), batch_sampler=plan,
                        collate_fn=lambda b: b, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up (worker processes) is not throughput
    started, count = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(it)
        count += len(images)
    return count / (time.perf_counter() - started)


def step_rate(device: torch.device, ours: bool, steps: int = 20, batch: int = 128,
              spec: ModelSpec | None = None) -> float:
    """Training steps of random data per second, in images: ours (uint8 in, normalised on the device,
    channels-last, AMP where it pays, the training optimizer) or the seed style's. The default network
    unless `spec` names another."""
    torch.manual_seed(0)
    model = create_model(spec or preset_spec())
    fmt = memory_format(device) if ours else torch.contiguous_format
    model.to(device, memory_format=fmt)
    optimizer = sgd(model, DEFAULTS, device) if ours else torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    labels = torch.randint(0, 10, (batch,), device=device)
    amp_dtype = Runtime().amp_dtype(device) if ours else None

    def step() -> None:
        x = to_device(images, device) if ours else images.float().div(255).to(device).contiguous()
        with autocast(device, amp_dtype):
            loss = F.cross_entropy(model(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def our_epoch(train_split: Split, test_split: Split, device: torch.device, settings: TrainSettings,
              workers: int | None) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train(settings, train_split, test_split, Path(out), device, runtime=Runtime(workers=workers))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder that contains cifar-10-batches-py")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-images", type=int, default=50_000, help="epoch size for section 4")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workers", type=int, default=None, help="loader workers of our epoch (default: auto)")
    parser.add_argument("--skip-epochs", action="store_true", help="sections 1-3 only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    train_split, test_split = load_split(args.data_dir, train=True), load_split(args.data_dir, train=False)
    console = Console(stderr=args.json)
    results: dict = {"device": str(device), "torch": torch.__version__, "cpus": os.cpu_count(),
                     "machine": platform.processor() or platform.machine()}

    console.print("1/4 augmentation pipeline ...")
    results["augment_images_per_s"] = augmentation_rate(train_split, 4096)
    console.print("2/4 data loader ...")
    results["loader_images_per_s"] = {w: loader_rate(train_split, w, 60) for w in range(args.max_workers + 1)}
    console.print("3/4 training step ...")
    results["step_images_per_s"] = {"ours": step_rate(device, True), "seed": step_rate(device, False)}
    if not args.skip_epochs:
        subset = Split(train_split.images[:args.train_images], train_split.labels[:args.train_images])
        settings = TrainSettings(epochs=1)
        console.print(f"4/4 one epoch of {len(subset):,} images, ours then the seed-style baseline ...")
        ours = our_epoch(subset, test_split, device, settings, args.workers)
        seed = seed_epoch(subset, test_split, device, settings)
        results["epoch_seconds"] = {"ours": ours, "seed": seed, "speedup": seed / ours, "images": len(subset)}

    if args.json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"cifar-cli throughput on {device} ({results['cpus']} CPUs, torch {results['torch']})",
                  title_justify="left")
    for col in ("measure", "cifar-cli", "seed-style", "ratio"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    aug, step = results["augment_images_per_s"], results["step_images_per_s"]
    table.add_row("augmentation, images/s (1 process)", f"{aug['ours']:,.0f}", f"{aug['seed']:,.0f}",
                  f"{aug['ours'] / aug['seed']:.2f}x")
    for w, rate in results["loader_images_per_s"].items():
        table.add_row(f"data loader, images/s, {w} workers", f"{rate:,.0f}", "", "")
    table.add_row("training step, images/s", f"{step['ours']:,.0f}", f"{step['seed']:,.0f}",
                  f"{step['ours'] / step['seed']:.2f}x")
    if "epoch_seconds" in results:
        e = results["epoch_seconds"]
        table.add_row(f"one epoch ({e['images']:,} images + test), seconds", f"{e['ours']:.1f}", f"{e['seed']:.1f}",
                      f"[bold]{e['speedup']:.2f}x[/]")
    console.print(table)


if __name__ == "__main__":
    main()
