"""The figures gpu_check.py measures in a process of their own (steps 2 and 4, run as
`gpu_check.py --inside ...`), the plan that tells them what to measure, and the dry run's tiny CIFAR-10.
Imported by gpu_check.py, the script people run; torch is imported inside each measurement."""

from __future__ import annotations

import json
import pickle
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_cli.data import CLASSES, FOLDER

NO_CUDA = "skipped (no CUDA)"


@dataclass(frozen=True)
class Sizes:
    """How much each step does: the real check on a GPU, or tiny for --dry-run."""

    audit_steps: int  # training steps the sync audit watches
    audit_batch: int  # also the batch of the throughput figures
    short_epochs: int  # each T4-imitation run
    val_split: int
    cli_batch: int
    final_epochs: int  # step 5
    timed_batches: int  # batches timed for images/s
    step_reps: int  # training steps timed, after 3 of warm-up
    patience: float  # each step's budget, and the default --budget, times this: a shared CPU is slow


REAL = Sizes(audit_steps=20, audit_batch=128, short_epochs=4, val_split=5000, cli_batch=128, final_epochs=40,
             timed_batches=150, step_reps=50, patience=1)
DRY = Sizes(audit_steps=3, audit_batch=16, short_epochs=3, val_split=20, cli_batch=16, final_epochs=1,
            timed_batches=2, step_reps=2, patience=5)
DRY_IMAGES = (20, 40)  # the dry run's CIFAR-10: training images per batch file (of 5), test images


@dataclass(frozen=True)
class Plan:
    device: str  # "cuda", or "cpu" for --dry-run
    data_dir: Path
    out: Path
    dry_run: bool
    sizes: Sizes

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# --- 2. the sync audit, inside its child ---------------------------------------------------------------

def count_syncs(work: Callable[[], object], cuda: bool) -> Counter:
    """Where the device was waited for while `work` ran: file:line -> times (empty on the CPU)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def audit_inside(plan: Plan) -> dict:
    """20 steps of one epoch (train_one_epoch, its every-10-steps reads included) and one evaluation, each
    after an unwatched warm-up (cuDNN's algorithm search syncs on every new shape)."""
    import torch

    from cifar_cli.data import Split, load_split
    from cifar_cli.models import preset_spec
    from cifar_cli.run_folder import StopSignals
    from cifar_cli.run_state import EpochTotals
    from cifar_cli.runtime import Distributed, Runtime
    from cifar_cli.settings import TrainSettings
    from cifar_cli.training.evaluation import evaluate
    from cifar_cli.training.loop import train_one_epoch
    from cifar_cli.training.session import Silent
    from cifar_cli.training.trainer import build_trainer

    device, size = torch.device(plan.device), plan.sizes
    full, test = load_split(plan.data_dir, train=True), load_split(plan.data_dir, train=False)
    count = size.audit_steps * size.audit_batch
    split = Split(full.images[:count], full.labels[:count])
    settings = TrainSettings(epochs=2, batch_size=size.audit_batch)
    runtime, dist = Runtime(augment_on="device"), Distributed()
    runtime.configure(device, dist)
    trainer = build_trainer(settings, preset_spec(), split, device, runtime, dist)

    def epoch(number: int) -> None:
        train_one_epoch(trainer, EpochTotals(number), StopSignals(), Silent())

    def judge() -> None:
        evaluate(trainer.eval_model, test, device, amp_dtype=trainer.amp_dtype, tta=settings.tta)

    epoch(1)
    judge()
    steps, batches = count_syncs(lambda: epoch(2), plan.cuda), count_syncs(judge, plan.cuda)
    return {"device": plan.device, "amp": str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype
            else None, "steps": size.audit_steps, "train_syncs": dict(steps), "eval_syncs": dict(batches),
            "every_step": sorted(k for k, n in steps.items() if n >= size.audit_steps),
            "every_batch": sorted(k for k, n in batches.items() if n > 2),  # the final reads: once each
            "audited": plan.cuda}


# --- 4. throughput, inside its child ----------------------------------------------------------------------

def throughput_inside(plan: Plan, result: Path) -> dict:
    """Each figure on its own (one failing leaves the others), the file rewritten after each."""
    import torch

    from cifar_cli.data import load_split
    from cifar_cli.runtime import Distributed, Runtime, available_cpus

    device, size, found = torch.device(plan.device), plan.sizes, {}
    Runtime().configure(device, Distributed())
    train_split, test_split = load_split(plan.data_dir, train=True), load_split(plan.data_dir, train=False)
    workers = (0, min(8, max(1, available_cpus() - 1))) if plan.cuda else (0,)
    batch, timed = size.audit_batch, size.timed_batches

    def measure(name: str, figure: Callable[[], object]) -> None:
        try:
            found[name] = figure()
        except Exception as failure:  # noqa: BLE001 - recorded, and the other figures still measured
            found[name] = {"error": f"{type(failure).__name__}: {failure}"[:600]}
        result.write_text(json.dumps(found, indent=2))

    measure("loader_images_per_s", lambda: {w: images_per_s(train_split, device, batch, timed, w) for w in workers})
    measure("device_images_per_s", lambda: images_per_s(train_split, device, batch, timed, None))
    measure("augment_ms_per_batch", lambda: augment_ms(train_split, device, batch, timed))
    measure("eval_images_per_s", lambda: eval_rates(test_split, device))
    measure("step_eager", lambda: step_ms(train_split, device, batch, size.step_reps, False))
    if plan.cuda:
        measure("step_compiled", lambda: step_ms(train_split, device, batch, size.step_reps, True))
    else:
        measure("step_compiled", lambda: NO_CUDA)
    return found


def images_per_s(split, device, batch: int, timed: int, workers: int | None) -> int:  # noqa: ANN001
    """Augmented batches delivered per second: by Albumentations in `workers` loader processes, or (None) by
    the device path (the training set on the device, augmented there). The first batch (start-up) untimed."""
    from torch.utils.data import DataLoader

    from cifar_cli import device_augment
    from cifar_cli.augment import BatchAugmenter, train_pipeline
    from cifar_cli.data import AugmentedBatches, DeviceBatches, EpochBatches
    from cifar_cli.settings import DEFAULTS

    plan = EpochBatches(len(split), batch, seed=0, odds=DEFAULTS.augment_odds)
    batches = iter(DeviceBatches(split, plan, device_augment.augment_chunk, device) if workers is None else DataLoader(
        AugmentedBatches(split, BatchAugmenter(train_pipeline(plan.odds))), batch_sampler=plan,
        collate_fn=whole_batch, num_workers=workers))
    next(batches)
    wait(device)
    started, count = time.perf_counter(), 0
    for _, (images, _) in zip(range(timed), batches):
        count += len(images)
    wait(device)
    return round(count / (time.perf_counter() - started))


def whole_batch(batch: tuple) -> tuple:
    return batch  # AugmentedBatches serves whole batches


def augment_ms(split, device, batch: int, reps: int) -> dict:  # noqa: ANN001 - a Split and a torch.device
    """Augmentation alone, ms per batch already on the device: a batch a call, and as the device path
    does it, a chunk of batches a call."""
    import torch

    from cifar_cli import device_augment
    from cifar_cli.data import batches_per_chunk
    from cifar_cli.settings import DEFAULTS

    per_chunk = batches_per_chunk(device, batch)
    images = torch.from_numpy(split.images[:batch * per_chunk]).to(device).permute(0, 3, 1, 2)
    odds, figures = DEFAULTS.augment_odds, {"batches_per_chunk": per_chunk}
    calls = {"alone": lambda seed: device_augment.augment(images[:batch], seed, odds),
             "in_chunks": lambda seed: device_augment.augment_chunk(
                 images, [(seed * per_chunk + k, batch, odds) for k in range(per_chunk)])}
    for name, call in calls.items():
        call(0)
        wait(device)
        started, count = time.perf_counter(), max(1, reps // (per_chunk if name == "in_chunks" else 1))
        for seed in range(count):
            call(seed)
        wait(device)
        done = count * (per_chunk if name == "in_chunks" else 1)
        figures[name] = round(1000 * (time.perf_counter() - started) / done, 3)
    return figures


def eval_rates(split, device) -> dict:  # noqa: ANN001 - a Split and a torch.device
    """Images/s of evaluate (flip TTA, the card's autocast) at batch 256 and 2048, after a warm-up of each."""
    from cifar_cli.models import create_model, preset_spec
    from cifar_cli.runtime import Runtime, memory_format
    from cifar_cli.training.evaluation import evaluate

    model = create_model(preset_spec()).to(device, memory_format=memory_format(device))
    dtype, rates = Runtime().amp_dtype(device), {}
    for batch in (256, 2048):
        evaluate(model, split, device, batch_size=batch, amp_dtype=dtype, tta=True)
        started = time.perf_counter()
        evaluate(model, split, device, batch_size=batch, amp_dtype=dtype, tta=True)  # ends reading the result
        rates[batch] = round(len(split) / (time.perf_counter() - started))
    return rates


def step_ms(split, device, batch: int, reps: int, compiled: bool) -> dict:  # noqa: ANN001
    """ms per training step (train_step) on one batch already on the device, and the launches' own share;
    compiled: also the graphs torch.compile made and its graph breaks."""
    import torch

    from cifar_cli.models import preset_spec
    from cifar_cli.runtime import Distributed, Runtime
    from cifar_cli.settings import TrainSettings
    from cifar_cli.training.loop import train_step
    from cifar_cli.training.trainer import build_trainer

    if compiled:
        torch._dynamo.reset()
    runtime, began = Runtime(compile=compiled, augment_on="device"), time.perf_counter()
    runtime.configure(device, Distributed())
    trainer = build_trainer(TrainSettings(epochs=100, batch_size=batch), preset_spec(), split, device, runtime,
                            Distributed())
    images, labels = next(iter(trainer.loader))
    for step in range(1, 4):  # warm-up: cuDNN's choice of algorithms, compilation
        train_step(trainer, images, labels, 1, step)
    wait(device)
    started = time.perf_counter()
    for step in range(4, 4 + reps):
        train_step(trainer, images, labels, 1, step)
    launched = time.perf_counter()
    wait(device)
    done = time.perf_counter()
    times = {"step_ms": round(1000 * (done - started) / reps, 3),
             "launch_ms": round(1000 * (launched - started) / reps, 3)}
    if not compiled:
        return times
    counters = getattr(getattr(torch._dynamo, "utils", None), "counters", {})
    return times | {"compile_and_warm_up_s": round(started - began, 1),
                    "graphs": counters.get("stats", {}).get("unique_graphs"),
                    "graph_breaks": sum(counters.get("graph_break", {}).values())}


def wait(device) -> None:  # noqa: ANN001 - a torch.device
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the dry run's data ----------------------------------------------------------------------------------

def write_tiny_cifar(root: Path, per_batch: int, test: int) -> Path:
    """A small CIFAR-10 in the official on-disk format (protocol-2 pickles, channel-major rows), each class
    its own tint, so that an epoch learns something."""
    rng = np.random.default_rng(0)
    tints = rng.uniform(30, 225, (10, 3))
    folder = root / FOLDER
    folder.mkdir(parents=True)

    def batch(path: Path, count: int, name: str) -> None:
        labels = rng.permutation(np.arange(count) % 10)
        images = (tints[labels][:, None, None] + rng.normal(0, 30, (count, 32, 32, 3))).clip(0, 255).astype(np.uint8)
        path.write_bytes(pickle.dumps({"batch_label": name, "labels": labels.tolist(),
                                       "data": images.transpose(0, 3, 1, 2).reshape(count, 3072),
                                       "filenames": [f"image_{i:05d}.png" for i in range(count)]}, protocol=2))

    for i in range(1, 6):
        batch(folder / f"data_batch_{i}", per_batch, f"training batch {i} of 5")
    batch(folder / "test_batch", test, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": per_batch, "label_names": list(CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root
