"""The CUDA path checked in one go, for the few minutes a GPU is lent (about 8 on an H100/H200):

    python benchmarks/gpu_check.py --out DIR [--data-dir DIR] [--budget SECONDS] [--dry-run]

First it prints nvidia-smi, the driver, torch and CUDA. Then each step runs within its own time budget (and
all within --budget); a step that fails or runs out of time is recorded and the check goes on:
  1. the CUDA tests: tests/test_cuda.py and the device-pixel parity test of tests/test_device_augment.py;
     on a GPU every one must run, a skip is a failure;
  2. a sync audit: 20 training steps and one evaluation, by the project's own train_one_epoch and evaluate,
     under torch.cuda.set_sync_debug_mode("warn"), in bf16 and in fp16 forced by $CIFAR_PRETEND_CAPABILITY;
     a place that syncs every step (or every evaluation batch) fails it;
  3. a T4 imitation: short held-out runs (cifar train --val-split) in fp32 (--no-amp), bf16 and forced fp16
     (CIFAR_PRETEND_CAPABILITY=7.5), the fp16 run stopped after its first epoch and resumed in bf16;
  4. throughput: images/s of the loader and of the device path, augmentation ms per batch, evaluation at
     batch 256 and 2048, a training step eager and compiled (and the graphs torch.compile made);
  5. one real `cifar train --epochs 40 --device cuda`, timed, data included, and its final test accuracy
     (goal: under 30 s on one H100/H200).
The command-line steps run `python -m cifar_cli` as users do; the in-process ones (2, 4) run this script
again in a child process, so that every step can be stopped at its budget.

DIR gets each step's output (STEP.log, STEP.json, runs/STEP/) and summary.json, rewritten after every step
so that a check stopped from outside keeps what it measured. --dry-run runs the whole check on the CPU on a
tiny generated CIFAR-10 with tiny epochs and step counts, the CUDA-only parts reported as "skipped (no
CUDA)": a check of the check on any machine (tests/test_gpu_check.py runs it).
A check, not a test: it records what it finds and exits 0 unless it could not start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # this checkout's cifar_cli, not another installed copy (children: PYTHONPATH)

from cifar_cli.data import CLASSES, FOLDER  # noqa: E402

NO_CUDA = "skipped (no CUDA)"
OUT_OF_TIME = "skipped (out of time)"
PASSED, FAILED = "passed", "failed"
PRETEND = "CIFAR_PRETEND_CAPABILITY"  # cifar_cli.runtime: a lower compute capability, to imitate a T4
T4 = "7.5"
GOAL_SECONDS = 30.0
BUDGET = 510  # seconds: the check within a 10-minute command, with room for start-up


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


# --- running children, each bounded --------------------------------------------------------------------

def child_env(pretend: str | None = None) -> dict[str, str]:
    """The environment of every child: this checkout first on the path; the capability pretended only
    where a step asks for it."""
    env = {k: v for k, v in os.environ.items() if k != PRETEND}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if pretend:
        env[PRETEND] = pretend
    return env


def start(cmd: list[str], log: Path, env: dict[str, str], stdout: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        err.write(f"$ {shlex.join(cmd)}\n")
    err, out = log.open("a"), (stdout.open("w") if stdout else None)
    try:  # its own session: a child over its budget is stopped with everything it started
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out or err, stderr=err, start_new_session=True)
    finally:
        err.close()
        if out:
            out.close()


def finish(proc: subprocess.Popen, deadline: float) -> int | None:
    """The child's exit code, or None when it ran past `deadline` (it is then killed, with its group)."""
    try:
        return proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def run_child(cmd: list[str], log: Path, timeout: float, env: dict[str, str],
              stdout: Path | None = None) -> tuple[int | None, float]:
    started = time.monotonic()
    rc = finish(start(cmd, log, env, stdout), started + timeout)
    return rc, round(time.monotonic() - started, 2)


def cifar(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifar_cli", *args]


def ran(rc: int | None) -> str:
    return "timed out" if rc is None else f"exit code {rc}"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- 1. the CUDA tests ------------------------------------------------------------------------------------

PARITY_TEST = "tests/test_device_augment.py::test_the_device_gives_the_cpus_pixels"


def cuda_tests(plan: Plan, timeout: float) -> dict:
    report = plan.out / "1-cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
           "tests/test_cuda.py", PARITY_TEST]
    env = child_env() | {"CIFAR_DATA_DIR": str(plan.data_dir)}
    rc, seconds = run_child(cmd, plan.out / "1-cuda-tests.log", timeout, env)
    counts = {"tests": 0, "skipped": 0, "failures": 0, "errors": 0}
    if report.exists():
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    counts["ran"] = counts["tests"] - counts["skipped"]
    good = rc == 0 and counts["ran"] > 0 and counts["skipped"] == 0
    why = None if good else f"{ran(rc)}; {counts['ran']} ran, {counts['skipped']} skipped (a skip on a GPU fails)"
    return {"status": PASSED if good else FAILED, "seconds": seconds, "details": counts, "error": why,
            "outputs": ["1-cuda-tests.log", "1-cuda-tests.xml"]}


# --- 2. the sync audit (in a child: --inside sync-audit) ---------------------------------------------------

def sync_audit(plan: Plan, timeout: float, variant: str) -> dict:
    name = f"2-sync-{variant}"
    cmd = [sys.executable, __file__, *inside_args(plan), "--inside", "sync-audit", "--result",
           str(plan.out / f"{name}.json")]
    rc, seconds = run_child(cmd, plan.out / f"{name}.log", timeout, child_env(T4 if variant == "fp16" else None))
    found = read_json(plan.out / f"{name}.json")
    expected = {"fp16": "float16", "bf16": "bfloat16"}[variant] if plan.cuda else None
    problems = [] if rc == 0 else [ran(rc)]
    if found and found.get("amp") != expected:
        problems.append(f"trained in {found.get('amp')}, not {expected}")
    problems += [f"{where} syncs every {what}" for what in ("step", "batch")
                 for where in found.get(f"every_{what}", [])]
    status = FAILED if problems else PASSED if plan.cuda else NO_CUDA  # on the CPU: the code ran, unaudited
    return {"status": status, "seconds": seconds, "details": found, "error": "; ".join(problems) or None,
            "outputs": [f"{name}.log", f"{name}.json"]}


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


# --- 3. the T4 imitation ----------------------------------------------------------------------------------

def short_run(plan: Plan, name: str, extra: list[str], pretend: str | None = None) -> tuple[subprocess.Popen, Path]:
    """A short held-out run of `cifar train`, started; its folder."""
    folder = plan.out / "runs" / name
    args = ["--epochs", str(plan.sizes.short_epochs), "--val-split", str(plan.sizes.val_split), "--batch-size",
            str(plan.sizes.cli_batch), "--device", plan.device, "--data-dir", str(plan.data_dir), "--out",
            str(folder), "--no-test", "--json", *extra]
    return start(cifar("train", *args), plan.out / f"{name}.log", child_env(pretend), plan.out / f"{name}.json"), folder


def run_facts(plan: Plan, name: str, folder: Path, rc: int | None, seconds: float) -> dict:
    history = read_json(plan.out / f"{name}.json").get("history") or read_json(folder / "history.json")
    history = history if isinstance(history, list) else []
    return {"rc": rc, "seconds": seconds, "amp": read_json(folder / "settings.json").get("amp", "?"),
            "epochs": len(history), "val_acc": [e.get("val_acc") for e in history],
            "test_acc": [e.get("test_acc") for e in history], "train_loss": [e.get("train_loss") for e in history]}


def t4_run(plan: Plan, timeout: float, name: str, extra: list[str], expected_amp: str | None,
           pretend: str | None = None) -> dict:
    started = time.monotonic()
    proc, folder = short_run(plan, name, extra, pretend)
    rc = finish(proc, started + timeout)
    facts = run_facts(plan, name, folder, rc, round(time.monotonic() - started, 2))
    return judged_run(plan, name, facts, expected_amp, rc == 0)


def judged_run(plan: Plan, name: str, facts: dict, expected_amp: str | None, exited_well: bool) -> dict:
    problems = [] if exited_well else [ran(facts["rc"])]
    if plan.cuda and facts["amp"] != expected_amp:
        problems.append(f"trained in {facts['amp']}, not {expected_amp}")
    if facts["epochs"] != plan.sizes.short_epochs:
        problems.append(f"{facts['epochs']} of {plan.sizes.short_epochs} epochs recorded")
    if not all(isinstance(x, float) and math.isfinite(x) for x in facts["train_loss"]):
        problems.append("a non-finite training loss")
    return {"status": FAILED if problems else PASSED, "seconds": facts["seconds"], "details": facts,
            "error": "; ".join(problems) or None, "outputs": [f"{name}.log", f"{name}.json", f"runs/{name}"]}


def epochs_saved(folder: Path) -> int:
    try:
        return len(json.loads((folder / "history.json").read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def fp16_stopped_then_bf16(plan: Plan, timeout: float) -> list[dict]:
    """The forced-fp16 run, stopped by SIGINT once its first epoch is saved, then resumed without the
    pretence: the GradScaler's state handed to a bf16 run."""
    name, started = "3-t4-fp16-stopped", time.monotonic()
    proc, folder = short_run(plan, name, [], T4)
    while proc.poll() is None and time.monotonic() < started + timeout / 2:
        if epochs_saved(folder) >= 1:
            proc.send_signal(signal.SIGINT)  # the run saves after the current step and exits 130
            break
        time.sleep(0.02)
    rc = finish(proc, started + timeout / 2)
    facts = run_facts(plan, name, folder, rc, round(time.monotonic() - started, 2))
    stopped = {"status": PASSED if rc == 130 and (folder / "last.safetensors").exists() else FAILED,
               "seconds": facts["seconds"], "details": facts, "outputs": [f"{name}.log", f"runs/{name}"],
               "error": None if rc == 130 else f"{ran(rc)}, not stopped by SIGINT (130) after its first epoch"}
    if plan.cuda and facts["amp"] != "float16":
        stopped |= {"status": FAILED, "error": f"trained in {facts['amp']}, not float16"}
    name, begun = "3-t4-resumed-bf16", time.monotonic()
    cmd = cifar("train", "--resume", str(folder / "last.safetensors"), "--data-dir", str(plan.data_dir),
                "--device", plan.device, "--json")
    rc, seconds = run_child(cmd, plan.out / f"{name}.log", max(1.0, started + timeout - begun), child_env(),
                            plan.out / f"{name}.json")
    resumed = run_facts(plan, name, folder, rc, seconds)
    return [stopped, judged_run(plan, name, resumed, "bfloat16", rc == 0)
            | {"outputs": [f"{name}.log", f"{name}.json", "runs/3-t4-fp16-stopped"]}]


# --- 4. throughput (in a child: --inside throughput) ------------------------------------------------------

def throughput(plan: Plan, timeout: float) -> dict:
    cmd = [sys.executable, __file__, *inside_args(plan), "--inside", "throughput", "--result",
           str(plan.out / "4-throughput.json")]
    rc, seconds = run_child(cmd, plan.out / "4-throughput.log", timeout, child_env())
    found = read_json(plan.out / "4-throughput.json")
    errors = [f"{k}: {v['error']}" for k, v in found.items() if isinstance(v, dict) and "error" in v]
    problems = ([] if rc == 0 else [ran(rc)]) + errors
    return {"status": FAILED if problems else PASSED, "seconds": seconds, "details": found,
            "error": "; ".join(problems) or None, "outputs": ["4-throughput.log", "4-throughput.json"]}


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


# --- 5. the real run ---------------------------------------------------------------------------------------

def real_run(plan: Plan, timeout: float) -> dict:
    name = "5-train"
    folder = plan.out / "runs" / name
    cmd = cifar("train", "--epochs", str(plan.sizes.final_epochs), "--device", plan.device, "--data-dir",
                str(plan.data_dir), "--out", str(folder), "--json")
    rc, seconds = run_child(cmd, plan.out / f"{name}.log", timeout, child_env(), plan.out / f"{name}.json")
    history = read_json(plan.out / f"{name}.json").get("history") or read_json(folder / "history.json") or [{}]
    history = history if isinstance(history, list) else [{}]  # a run stopped at its budget: the epochs it saved
    accuracy = history[-1].get("test_acc")
    shipped = shipped_accuracy()
    details = {"epochs": len(history), "seconds": seconds, "test_acc": accuracy, "goal_s": GOAL_SECONDS,
               "epoch_seconds": [e.get("seconds") for e in history],
               "under_goal": seconds < GOAL_SECONDS if plan.cuda and rc == 0 else None,
               "shipped_checkpoint_test_acc": shipped,
               "points_from_shipped": round(100 * (accuracy - shipped), 2) if accuracy and shipped else None}
    good = rc == 0 and isinstance(accuracy, float)
    return {"status": PASSED if good else FAILED, "seconds": seconds, "details": details,
            "error": None if good else f"{ran(rc)}; no final test accuracy",
            "outputs": [f"{name}.log", f"{name}.json", f"runs/{name}"]}


def shipped_accuracy() -> float | None:
    """The shipped 40-epoch checkpoint's test accuracy: the CPU-loader run a GPU run should match."""
    try:
        from cifar_cli.checkpoint import load_checkpoint

        return load_checkpoint(REPO / "cifar_cli/weights/cifarnet-whiten-40ep.safetensors").metrics["test_acc"]
    except Exception:  # noqa: BLE001 - a figure to compare with, not part of the check
        return None


# --- the check -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    cap_s: float  # its own budget
    floor_s: float  # what it needs at least: kept back for it while earlier steps run
    cuda_only: bool
    run: Callable[[Plan, float], dict | list[dict]]


STEPS = [
    Step("1-cuda-tests", 150, 40, True, cuda_tests),
    Step("2-sync-bf16", 60, 20, False, lambda plan, t: sync_audit(plan, t, "bf16")),
    Step("2-sync-fp16", 60, 20, False, lambda plan, t: sync_audit(plan, t, "fp16")),
    Step("3-t4-fp32", 60, 20, False, lambda plan, t: t4_run(plan, t, "3-t4-fp32", ["--no-amp"], None)),
    Step("3-t4-bf16", 60, 20, False, lambda plan, t: t4_run(plan, t, "3-t4-bf16", [], "bfloat16")),
    Step("3-t4-fp16-stopped+3-t4-resumed-bf16", 120, 40, False, fp16_stopped_then_bf16),
    Step("4-throughput", 180, 60, False, throughput),
    Step("5-train", 240, 90, False, real_run),
]


def run_steps(plan: Plan, budget: float, summary: dict) -> None:
    deadline = time.monotonic() + budget
    for i, step in enumerate(STEPS):
        names = step.name.split("+")
        kept_back = sum(s.floor_s for s in STEPS[i + 1:] if plan.cuda or not s.cuda_only)
        kept_back *= plan.sizes.patience
        timeout = min(step.cap_s * plan.sizes.patience, deadline - time.monotonic() - kept_back)
        print(f"[{i + 1}/{len(STEPS)}] {step.name} ...", flush=True)
        if step.cuda_only and not plan.cuda:
            results = [{"status": NO_CUDA} for _ in names]
        elif timeout < step.floor_s * plan.sizes.patience / 2:
            results = [{"status": OUT_OF_TIME, "error": f"{max(0, round(timeout))} s left of --budget"}
                       for _ in names]
        else:
            results = attempt(plan, step, timeout)
        for name, result in zip(names, results):
            summary["steps"][name] = {"status": FAILED, "seconds": None, "details": {}, "error": None,
                                      "outputs": []} | result | {"budget_s": round(max(timeout, 0))}
            print(f"    {name}: {result['status']}" + (f" ({result['error']})" if result.get("error") else ""),
                  flush=True)
        write_summary(plan, summary)


def attempt(plan: Plan, step: Step, timeout: float) -> list[dict]:
    """The step's result(s); a step that raises is a failure recorded with its traceback."""
    try:
        result = step.run(plan, timeout)
        return result if isinstance(result, list) else [result]
    except Exception as failure:  # noqa: BLE001 - the check goes on
        log = f"{step.name.split('+')[0]}.error.log"
        (plan.out / log).write_text(traceback.format_exc())
        return [{"status": FAILED, "error": f"{type(failure).__name__}: {failure}"[:600], "outputs": [log]}
                for _ in step.name.split("+")]


def write_summary(plan: Plan, summary: dict) -> None:
    temporary = plan.out / "summary.json.partial"
    temporary.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(temporary, plan.out / "summary.json")


def environment(plan: Plan) -> dict:
    """nvidia-smi, the driver, torch and CUDA: printed first, saved in 0-environment.log."""
    import torch

    lines = [probe(["nvidia-smi"]),
             probe(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv"])]
    facts = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "cuda_available": torch.cuda.is_available(), "device": plan.device, "dry_run": plan.dry_run,
             "commit": probe(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()}
    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(0)
        facts |= {"gpu": torch.cuda.get_device_name(0), "capability": f"{capability[0]}.{capability[1]}",
                  "driver": lines[1].splitlines()[-1].split(", ")[1] if ", " in lines[1] else None}
    text = "\n".join(lines) + "\n" + "\n".join(f"{k}: {v}" for k, v in facts.items())
    (plan.out / "0-environment.log").write_text(text + "\n")
    print(text, flush=True)
    return facts


def probe(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return done.stdout or done.stderr
    except (OSError, subprocess.TimeoutExpired) as failure:
        return f"{shlex.join(cmd)}: {failure}"


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


def inside_args(plan: Plan) -> list[str]:
    return ["--out", str(plan.out), "--data-dir", str(plan.data_dir), "--device", plan.device,
            *(["--dry-run"] if plan.dry_run else [])]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for each step's output and summary.json")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("CIFAR_DATA_DIR"),
                        help="the folder that holds cifar-10-batches-py (default: $CIFAR_DATA_DIR)")
    parser.add_argument("--budget", type=float, help=f"seconds for all steps together (default {BUDGET}; "
                        f"--dry-run: {BUDGET * DRY.patience:.0f})")
    parser.add_argument("--dry-run", action="store_true", help="the whole check on the CPU on tiny generated data")
    parser.add_argument("--inside", choices=["sync-audit", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.inside:  # a step's own process (2, 4): the plan comes from the parent
        plan = Plan(args.device, args.data_dir, args.out, args.dry_run, DRY if args.dry_run else REAL)
        found = audit_inside(plan) if args.inside == "sync-audit" else throughput_inside(plan, args.result)
        args.result.write_text(json.dumps(found, indent=2))
        return
    plan = make_plan(args)
    summary = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "budget_s": args.budget or BUDGET * plan.sizes.patience,
               "sizes": asdict(plan.sizes), "environment": {}, "steps": {}}
    plan.out.mkdir(parents=True, exist_ok=True)
    summary["environment"] = environment(plan)
    write_summary(plan, summary)
    started = time.monotonic()
    run_steps(plan, summary["budget_s"], summary)
    summary["seconds"] = round(time.monotonic() - started, 1)
    write_summary(plan, summary)
    statuses = Counter(step["status"] for step in summary["steps"].values())
    print(f"done in {summary['seconds']} s: " + ", ".join(f"{n} {s}" for s, n in statuses.items())
          + f"; see {plan.out / 'summary.json'}")


def make_plan(args: argparse.Namespace) -> Plan:
    """The check's plan, or a one-line refusal (exit 2): an --out that holds a check, no data, no CUDA."""
    import torch

    def refuse(why: str) -> None:
        print(f"error: {why}", file=sys.stderr)
        sys.exit(2)

    out = args.out.resolve()
    if (out / "summary.json").exists():
        refuse(f"{out} already holds a check; give another --out")
    if args.dry_run:
        data_dir = write_tiny_cifar(out / "data", *DRY_IMAGES) if not (out / "data" / FOLDER).exists() else out / "data"
        return Plan("cpu", data_dir, out, True, DRY)
    if not torch.cuda.is_available():
        refuse("no CUDA device here; --dry-run checks the check on the CPU")
    if args.data_dir is None or not (args.data_dir / FOLDER / "test_batch").is_file():
        refuse(f"no CIFAR-10 in {args.data_dir}: give --data-dir (or set CIFAR_DATA_DIR) to the folder that "
               f"holds {FOLDER}")
    return Plan("cuda", args.data_dir.resolve(), out, False, REAL)


if __name__ == "__main__":
    main()
