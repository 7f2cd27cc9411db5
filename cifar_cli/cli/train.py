"""`cifar train`: the options of a run, its live progress, and what it says when it starts, ends or stops."""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from cifar_cli.cli.options import (
    TTA,
    AffineP,
    AugmentPlace,
    CutoutP,
    DataDir,
    Device,
    DeviceName,
    Download,
    Json,
    ModelOption,
    ToneP,
    Workers,
    data_dir_or_default,
    err,
    expand,
    fails_cleanly,
    helped,
    in_panel,
    long_step,
    out,
    print_json,
    say,
    setting_option,
    warn_if_changed,
)
from cifar_cli.interrupts import signal_arrived
from cifar_cli.terminal import counted, literal
from cifar_cli.train_progress import RichTrainObserver

if TYPE_CHECKING:
    import torch

    from cifar_cli.checkpoint import Checkpoint
    from cifar_cli.data import Split
    from cifar_cli.run_plan import RunPlan
    from cifar_cli.runtime import Distributed, Runtime


# The panels `cifar train --help` groups its options in.
SCHEDULE, REGULARISATION, AUGMENTATION = "Schedule", "Regularisation", "Augmentation"
DATA, HARDWARE, OUTPUT = "Data and evaluation", "Hardware", "Run folder and output"


@fails_cleanly
def train(
    model: ModelOption = None,
    epochs: setting_option("epochs", "--epochs", "Epochs to train.") = None,
    seed: setting_option("seed", "--seed", "Random seed; the same seed gives the same result on the CPU.") = None,
    batch_size: setting_option("batch_size", "--batch-size", "Images per step. Under torchrun, the whole "
                                "step's: split evenly among the processes, so a run takes the steps and schedule of "
                                "one GPU.",
                               panel=SCHEDULE) = None,
    lr: setting_option("lr", "--lr", "Peak learning rate of the one-cycle schedule.", float, SCHEDULE) = None,
    lookahead: setting_option("lookahead", "--lookahead", "Lookahead, as in airbench: every 5 steps, pull slow "
                               "weights toward the trained ones and go on from them, keeping up to this per-step "
                               "decay by the end (ramped in as progress cubed), e.g. 0.95 (0: off). The slow "
                               "weights are evaluated and saved.", float, SCHEDULE) = None,
    ema: setting_option("ema", "--ema", "Evaluate and save an exponential moving average of the weights with "
                         "this per-step decay, e.g. 0.999 (0: off).", float, SCHEDULE) = None,
    weight_decay: setting_option("weight_decay", "--weight-decay", "L2 weight decay of the convolution and "
                                  "linear weights (not BatchNorm or biases).", float, REGULARISATION) = None,
    label_smoothing: setting_option("label_smoothing", "--label-smoothing", "Label smoothing of the training "
                                     "loss (0: off).", float, REGULARISATION) = None,
    mixup: setting_option("mixup", "--mixup", "Mixup: blend each batch with a shuffled copy of itself, the "
                           "blend's weight drawn from Beta(a, a) for this a, e.g. 0.2, and the loss blended "
                           "likewise; it fades out with the augmentation (0: off).", float, REGULARISATION) = None,
    affine_p: in_panel(AffineP, AUGMENTATION) = None,
    cutout_p: in_panel(CutoutP, AUGMENTATION) = None,
    tone_p: in_panel(ToneP, AUGMENTATION) = None,
    aug_fade: setting_option("aug_fade", "--aug-fade", "Fade the augmentation out over this last fraction of the "
                              "run: the odds of its three random transforms fall linearly to zero, batch by batch "
                              "(the flip stays); 0: off.", float, AUGMENTATION) = None,
    augment_on: Annotated[AugmentPlace | None, typer.Option(
        "--augment-on", show_default=False, rich_help_panel=AUGMENTATION,
        help=helped("Where training images are augmented: device (batched torch ops where the images live, "
                    "the training set uploaded once) or loader (Albumentations in loader workers); auto: device on "
                    "CUDA, loader elsewhere. The same pipeline, drawn from other random streams.",
                    "auto; a resumed run keeps to what it began with"))] = None,
    val_split: setting_option("val_split", "--val-split", "Hold out this many training images (the same ones for "
                               "every seed) and pick the best epoch by them: tune on these, keep the test set for "
                               "the final figure.", panel=DATA) = None,
    test: Annotated[bool | None, typer.Option(
        "--test/--no-test", show_default=False, rich_help_panel=DATA,
        help=helped("Evaluate the test set after each epoch. --no-test (with --val-split) leaves it "
                    "unread while you choose settings: held-out images alone judge the epochs, each epoch is "
                    "quicker, and the weights are the same.", "test; a resumed run keeps to what it began with"))
    ] = None,
    tta: in_panel(TTA, DATA) = None,
    data_dir: in_panel(DataDir, DATA) = None,
    download: in_panel(Download, DATA) = False,
    device: in_panel(Device, HARDWARE) = DeviceName.auto,
    workers: in_panel(Workers, HARDWARE) = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", show_default=False, rich_help_panel=HARDWARE,
        help=helped("Mixed precision on CUDA (autocast).",
                    "amp where the GPU can: bf16 on compute capability 8.0+, fp16 on 7.x"))] = None,
    compile_model: Annotated[bool, typer.Option("--compile", rich_help_panel=HARDWARE, help="torch.compile the "
                                                "network (CUDA: faster after a minute of compiling).")] = False,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", show_default=False, rich_help_panel=OUTPUT,
        help=helped("Folder for checkpoints, history.json and settings.json.",
                    "runs/<date-time>, or the resumed checkpoint's folder"), file_okay=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run saved in this last.safetensors, or in this run folder (its "
        "last.safetensors).", rich_help_panel=OUTPUT)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", show_default=False, rich_help_panel=OUTPUT,
        help="Take every setting, and the network, from this file: a run's settings.json (or its run folder), or "
        "any JSON or TOML file of settings; options given here override it, and the run says which.")] = None,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", show_default=False, rich_help_panel=OUTPUT,
        help="Start from the weights of this checkpoint (a run folder: its best.safetensors) with a fresh "
        "optimizer and schedule, to fine-tune; the network must be the same.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", rich_help_panel=OUTPUT,
        help="Replace the run already in --out (without it, a run there is never written over). The old run is "
        "kept in --out/.replaced until the new run saves its first checkpoint (at the end of its first epoch), "
        "then deleted; if the new run stops before then, the old run is put back.")] = False,
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard", rich_help_panel=OUTPUT,
        help=helped("Also write each epoch's loss, accuracy, lr and time, the confusion matrix every few epochs and "
                    "the settings as TensorBoard events into --out/tensorboard/, for tensorboard --logdir runs "
                    "(needs pip install 'cifar-cli[tensorboard]'); a resumed run adds to them.")),
    ] = False,
    as_json: in_panel(Json, OUTPUT) = False,
) -> None:
    """Train the network with live progress; saves last/best .safetensors checkpoints and history.json.

    Ctrl-C (or SIGTERM) finishes the current step, saves last.safetensors and prints how to resume.
    Under torchrun (torchrun --nproc_per_node=N -m cifar_cli train ...) it trains with DDP.
    """
    from cifar_cli.models import source_changed
    from cifar_cli.run_folder import default_out_dir, resume_command
    from cifar_cli.run_plan import plan_run, read_run_data, read_sources
    from cifar_cli.runtime import Runtime, init_distributed, resolve_device
    from cifar_cli.trust import remember

    data_dir = expand(data_dir)
    checkpoint, start = read_sources(expand(resume), expand(config), expand(init_from), model, say)
    resume = checkpoint.source if checkpoint is not None else None
    torch_device = resolve_device(DeviceName(device).value)
    plan = plan_run(checkpoint, dict(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_split=val_split, weight_decay=weight_decay,
        label_smoothing=label_smoothing, ema=ema, lookahead=lookahead, tta=tta, affine_p=affine_p,
        cutout_p=cutout_p, tone_p=tone_p, aug_fade=aug_fade, mixup=mixup),
        test=test, augment_on=AugmentPlace(augment_on).value if augment_on else None, amp=amp, model=model,
        device=torch_device, tell=say, start=start)
    if checkpoint is not None:
        warn_if_changed(plan.network, checkpoint, source_changed(checkpoint.model, plan.network))
    out_dir = expand(out_dir) or default_out_dir(resume)
    board = _tensorboard_log(out_dir, plan, checkpoint is not None) if tensorboard else None
    dist = init_distributed(torch_device)
    if dist.main:
        for line in remember(plan.network):  # a network file the user typed is trusted from now on (trust.py)
            say(line)
        for note in plan.notes:
            err.print(f"note: {literal(note)}", soft_wrap=True)
    with long_step("reading the CIFAR-10 images", as_json=as_json or not dist.main):
        train_split, test_split = read_run_data(plan, data_dir_or_default(data_dir), download, dist)
    console = err if as_json else out
    if dist.main:
        test_size = len(test_split) if test_split is not None else None
        console.print(train_header(plan, torch_device, dist.world, len(train_split), test_size, out_dir, resume),
                      soft_wrap=True)
    runtime = Runtime(workers=workers, amp=plan.choices.amp, compile=compile_model,
                      augment_on=plan.choices.augment_on)
    result = _run(plan, (train_split, test_split), out_dir, torch_device, runtime, checkpoint, dist, overwrite, console,
                  lambda saved: resume_command(saved, data_dir, model, DeviceName(device).value, tensorboard),
                  board if dist.main else None)
    if dist.main:
        print_json(result.to_dict()) if as_json else out.print(train_footer(result), soft_wrap=True)


def _run(plan: RunPlan, splits: tuple[Split, Split | None], out_dir: Path, device: torch.device, runtime: Runtime,
         checkpoint: Checkpoint | None, dist: Distributed, overwrite: bool, console: Console,
         resume_with: Callable[[Path], str], board: Any = None) -> Any:
    """The run itself, with live progress (and `board`, a TensorBoard log, told the same); a stop by a
    signal says what was saved and how to resume."""
    from cifar_cli.run_folder import what_is_saved
    from cifar_cli.runtime import shutdown_distributed
    from cifar_cli.training.loop import train as run_training
    from cifar_cli.training.session import Observers, TrainingInterrupted

    try:
        with RichTrainObserver(console, enabled=dist.main) as progress, board or nullcontext():
            result = run_training(plan.settings, *splits, out_dir, device, model_spec=plan.network, runtime=runtime,
                                  resume=checkpoint, observer=Observers(progress, board), dist=dist,
                                  overwrite=overwrite, start_from=plan.start.init_from)
        shutdown_distributed(together=True)
        return result
    except TrainingInterrupted as stop:
        shutdown_distributed(together=True)
        if dist.main:
            where = f"Stopped by {signal.Signals(stop.signum).name} at epoch {stop.epoch}, step {stop.step}; "
            if stop.checkpoint is None:
                err.print(f"{where}{literal(stop.kept)}.", soft_wrap=True)
            else:
                again = resume_with(stop.checkpoint)
                err.print(f"{where}saved {literal(stop.checkpoint)}. Resume with: {literal(again)}", soft_wrap=True)
        raise typer.Exit(128 + stop.signum) from None
    except KeyboardInterrupt:
        if not signal_arrived():
            raise  # raised by code the run called (a network's hook), not a Ctrl-C: fails_cleanly says so
        # before training began, or a second Ctrl-C
        err.print(f"Interrupted; {literal(what_is_saved(out_dir))}.", soft_wrap=True)
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        shutdown_distributed()


def _tensorboard_log(out_dir: Path, plan: RunPlan, resuming: bool) -> Any:
    """--tensorboard's log of the run, its extra and folder checked before the run starts."""
    from cifar_cli.tensorboard_log import TensorBoardLog, check_folder

    check_folder(out_dir, resuming)
    return TensorBoardLog(out_dir, plan.settings, plan.network.name)


def train_header(plan: RunPlan, device: Any, world: int, train_size: int, test_size: int | None, out_dir: Path,
                 resume: Path | None) -> str:
    settings = plan.settings
    processes = f" x {world} processes" if world > 1 else ""
    held = f" / {settings.val_split:,} held-out" if settings.val_split else ""
    test = f" / {test_size:,} test images" if test_size is not None else " images (test set left out)"
    return (f"Training on [bold]{device}{processes}[/]: {literal(plan.network.describe())}, "
            f"{train_size - settings.val_split:,} train{held}{test}, {counted(settings.epochs, 'epoch')}, "
            f"batch {settings.batch_size}, lr {settings.lr}, seed {settings.seed}"
            + (f", EMA {settings.ema}" if settings.ema else "")
            + (f", lookahead {settings.lookahead}" if settings.lookahead else "")
            + (f", augmentation fading over the last {settings.aug_fade:.0%}" if settings.aug_fade else "")
            + (f", mixup {settings.mixup}" if settings.mixup else "")
            + (", flip TTA" if settings.tta else "")
            + f" -> {literal(out_dir)}" + (f" (resuming {literal(resume)})" if resume else "")
            + _started_from(plan))


def _started_from(plan: RunPlan) -> str:
    """Where a new run's settings and weights came from, and the options given over its settings file."""
    config, init_from = plan.start.config, plan.start.init_from
    over = f"; given over it: {', '.join(plan.overridden)}" if plan.overridden else ""
    return ((f"; settings from {literal(config.path)}{literal(over)}" if config else "")
            + (f"; starting from the weights of {literal(init_from.source)}" if init_from else ""))


def train_footer(result: Any) -> str:
    from cifar_cli.records import headline

    final, best = result.history[-1], result.best
    summed = headline(result.history)  # test accuracy, or held-out where the test set was left out
    said = f"Done: final {summed.name} accuracy [bold]{100 * summed.of(final):.2f}%[/]"
    if result.best_by is None:
        said += ("; no held-out images (--val-split) to choose an epoch by, so the result is the last epoch "
                 "(best.safetensors holds it too)")
    else:
        if summed.key == "test_acc":
            said += f", held-out {100 * final.held_out_acc:.2f}%"
        said += (f"; best epoch by held-out accuracy: {best.epoch} ({summed.name} {100 * summed.of(best):.2f}%), "
                 "in best.safetensors")
    return f"{said}. Checkpoints and history.json in [bold]{literal(result.out_dir)}[/]"
