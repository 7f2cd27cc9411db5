"""The GPU-resident data path against the CPU loader, on one device. Run by hand on a CUDA machine:

    python benchmarks/gpu_path.py --data-dir DIR [--epochs 40] [--compile] [--json]

Prints (or writes as JSON):
  1. images/s delivered: Albumentations in loader workers (0..N) vs the training set on the device,
     augmented there (device_augment), each batch waited for;
  2. one training step (batch 128) in ms, with the batch already on the device, and the share of it that
     the Python side takes (wall time of the launches alone, while the device still works);
  3. the wall time of a full `cifar train` run (data, training, per-epoch test evaluation) with
     --augment-on device and with --augment-on loader, and each run's final test accuracy.
On the CPU it runs too (small --epochs / --train-images for a dry run); its figures are then the CPU's.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from bench import loader_rate
from rich.console import Console
from rich.table import Table

from cifar_cli import device_augment
from cifar_cli.data import DeviceBatches, EpochBatches, Split, load_split
from cifar_cli.models import preset_spec
from cifar_cli.runtime import Distributed, Runtime, resolve_device
from cifar_cli.settings import DEFAULTS, TrainSettings
from cifar_cli.training.loop import train, train_step
from cifar_cli.training.trainer import build_trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_rate(split: Split, device: torch.device, batches: int) -> float:
    """Images/s of DeviceBatches: index, augment and hand over batches that live on the device."""
    plan = EpochBatches(len(split), 128, seed=0, odds=DEFAULTS.augment_odds)
    it = iter(DeviceBatches(split, plan, device_augment.augment_chunk, device))
    next(it)  # the upload of the training set is start-up, not throughput
    sync(device)
    started, count = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(it)
        count += len(images)
    sync(device)
    return count / (time.perf_counter() - started)


def step_times(split: Split, device: torch.device, compile_model: bool, steps: int = 50) -> dict[str, float]:
    """ms per training step on one device-resident batch: in all, and the launches' own wall time."""
    settings = TrainSettings(epochs=100, batch_size=128)  # a schedule long enough for the steps timed
    runtime = Runtime(compile=compile_model, augment_on="device")
    runtime.configure(device, Distributed())
    trainer = build_trainer(settings, preset_spec(), split, device, runtime, Distributed())
    images, labels = next(iter(trainer.loader))
    for step in range(1, 6):  # warm-up: cuDNN's choice of algorithms, compilation
        train_step(trainer, images, labels, 1, step)
    sync(device)
    started = time.perf_counter()
    for step in range(steps):
        train_step(trainer, images, labels, 1, step)
    launched = time.perf_counter()
    sync(device)
    done = time.perf_counter()
    return {"step_ms": 1000 * (done - started) / steps, "launch_ms": 1000 * (launched - started) / steps}


def full_run(train_split: Split, test_split: Split, device: torch.device, epochs: int, augment_on: str,
             compile_model: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        sync(device)
        started = time.perf_counter()
        result = train(TrainSettings(epochs=epochs), train_split, test_split, Path(out), device,
                       runtime=Runtime(compile=compile_model, augment_on=augment_on))
        sync(device)
        seconds = time.perf_counter() - started
    last = result.history[-1]
    return {"seconds": seconds, "test_acc": last.test_acc, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder that contains cifar-10-batches-py")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of each full run (section 3)")
    parser.add_argument("--train-images", type=int, default=50_000)
    parser.add_argument("--max-workers", type=int, default=min(8, os.cpu_count() or 2))
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in sections 2 and 3")
    parser.add_argument("--skip-runs", action="store_true", help="sections 1 and 2 only")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    full = load_split(args.data_dir, train=True)
    train_split = Split(full.images[:args.train_images], full.labels[:args.train_images])
    test_split = load_split(args.data_dir, train=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    console = Console()
    results: dict = {"device": name, "torch": torch.__version__, "compile": args.compile}

    console.print("1/3 images/s delivered ...")
    batches = len(train_split) // 128 - 1  # one epoch's worth, less the first batch (start-up)
    results["loader_images_per_s"] = {w: loader_rate(train_split, w, min(60, batches))
                                      for w in range(args.max_workers + 1)}
    results["device_images_per_s"] = device_rate(train_split, device, min(200, batches))
    console.print("2/3 one training step ...")
    results["step"] = step_times(train_split, device, args.compile)
    if not args.skip_runs:
        console.print(f"3/3 two full runs of {args.epochs} epochs ...")
        results["runs"] = {place: full_run(train_split, test_split, device, args.epochs, place, args.compile)
                           for place in ("device", "loader")}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))

    table = Table(title=f"GPU-resident data path on {name}, torch {torch.__version__}"
                        f"{', compiled' if args.compile else ''}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for w, rate in results["loader_images_per_s"].items():
        table.add_row(f"CPU loader (Albumentations), {w} workers, images/s", f"{rate:,.0f}")
    table.add_row("device path, images/s", f"{results['device_images_per_s']:,.0f}")
    table.add_row("training step (batch 128), ms", f"{results['step']['step_ms']:.2f}")
    table.add_row("  of which Python launching, ms", f"{results['step']['launch_ms']:.2f}")
    for place, run in results.get("runs", {}).items():
        table.add_row(f"{run['epochs']} epochs, --augment-on {place}: seconds / final test accuracy",
                      f"{run['seconds']:.1f} s / {100 * run['test_acc']:.2f}%")
    console.print(table)


if __name__ == "__main__":
    main()
