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
import shlex
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # this checkout's cifar_cli, not another installed copy (children: PYTHONPATH)

from gpu_children import child_env, cifar, finish, ran, read_json, run_child, start  # noqa: E402
from gpu_measure import DRY, DRY_IMAGES, NO_CUDA, REAL, Plan, audit_inside, throughput_inside, write_tiny_cifar  # noqa: E402

from cifar_cli.data import FOLDER  # noqa: E402

OUT_OF_TIME = "skipped (out of time)"
PASSED, FAILED = "passed", "failed"
T4 = "7.5"
GOAL_SECONDS = 30.0
BUDGET = 510  # seconds: the check within a 10-minute command, with room for start-up


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
            "epochs": len(history), "held_out_acc": [e.get("held_out_acc") for e in history],
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
