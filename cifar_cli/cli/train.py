"""`cifar train`: the options of a run, its live progress, and what it says when it starts, ends or stops."""

from __future__ import annotations

import signal
from collections.abc import Callable
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
    out,
    print_json,
    setting_option,
    warn_if_changed,
)
from cifar_cli.interrupts import signal_arrived
from cifar_cli.terminal import literal
from cifar_cli.train_progress import RichTrainObserver

if TYPE_CHECKING:
    import torch

    from cifar_cli.checkpoint import Checkpoint
    from cifar_cli.data import Split
    from cifar_cli.run_plan import RunPlan
    from cifar_cli.runtime import Distributed, Runtime


@fails_cleanly
def train(
    epochs: setting_option("epochs", "--epochs", "Epochs to train.") = None,
    batch_size: setting_option("batch_size", "--batch-size", "Images per step (per process under torchrun).") = None,
    lr: setting_option("lr", "--lr", "Peak learning rate of the one-cycle schedule.", float) = None,
    seed: setting_option("seed", "--seed", "Random seed; the same seed gives the same result on the CPU.") = None,
    val_split: setting_option("val_split", "--val-split", "Hold out this many training images (the same ones for "
                               "every seed) and pick the best epoch by them: tune on these, keep the test set for "
                               "the final figure.") = None,
    weight_decay: setting_option("weight_decay", "--weight-decay", "L2 weight decay of the convolution and "
                                  "linear weights (not BatchNorm or biases).", float) = None,
    label_smoothing: setting_option("label_smoothing", "--label-smoothing", "Label smoothing of the training "
                                     "loss (0: off).", float) = None,
    ema: setting_option("ema", "--ema", "Evaluate and save an exponential moving average of the weights with "
                         "this per-step decay, e.g. 0.999 (0: off).", float) = None,
    lookahead: setting_option("lookahead", "--lookahead", "Lookahead, as in airbench: every 5 steps, pull slow "
                               "weights toward the trained ones and go on from them, keeping up to this per-step "
                               "decay by the end (ramped in as progress cubed), e.g. 0.95 (0: off). The slow "
                               "weights are evaluated and saved.", float) = None,
    affine_p: AffineP = None,
    cutout_p: CutoutP = None,
    tone_p: ToneP = None,
    aug_fade: setting_option("aug_fade", "--aug-fade", "Fade the augmentation out over this last fraction of the "
                              "run: the odds of its three random transforms fall linearly to zero, batch by batch "
                              "(the flip stays); 0: off.", float) = None,
    mixup: setting_option("mixup", "--mixup", "Mixup: blend each batch with a shuffled copy of itself, the "
                           "blend's weight drawn from Beta(a, a) for this a, e.g. 0.2, and the loss blended "
                           "likewise; it fades out with the augmentation (0: off).", float) = None,
    tta: TTA = None,
    test: Annotated[bool | None, typer.Option(
        "--test/--no-test", show_default="on; a resumed run keeps to what it began with",
        help="Evaluate the test set after each epoch. --no-test (with --val-split) leaves it "
        "unread while you choose settings: held-out images alone judge the epochs, each epoch is quicker, and "
        "the weights are the same.")] = None,
    model: ModelOption = None,
    device: Device = DeviceName.auto,
    data_dir: DataDir = None,
    download: Download = False,
    workers: Workers = None,
    augment_on: Annotated[AugmentPlace | None, typer.Option(
        "--augment-on", show_default="auto; a resumed run keeps to what it began with",
        help="Where training images are augmented: device (batched torch ops where the images live, "
        "the training set uploaded once) or loader (Albumentations in loader workers); auto: device on CUDA, "
        "loader elsewhere. The same pipeline, drawn from other random streams.")] = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", show_default="on where the GPU can: bf16 on compute capability 8.0+, fp16 on 7.x",
        help="Mixed precision on CUDA (autocast).")] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the network (CUDA: faster after "
                                                "a minute of compiling).")] = False,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", show_default="runs/<date-time>, or the resumed checkpoint's folder",
        help="Folder for checkpoints, history.json and settings.json.", file_okay=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run saved in this last.safetensors.", dir_okay=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the run already in --out (without it, a run there is never written over). The "
        "old run is kept in --out/.replaced until the new run saves its first checkpoint (at the end of its first "
        "epoch), then deleted; if the new run stops before then, the old run is put back.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Train the network with live progress; saves last/best .safetensors checkpoints and history.json.

    Ctrl-C (or SIGTERM) finishes the current step, saves last.safetensors and prints how to resume.
    Under torchrun (torchrun --nproc_per_node=N -m cifar_cli train ...) it trains with DDP.
    """
    from cifar_cli.checkpoint import load_checkpoint
    from cifar_cli.models import source_changed
    from cifar_cli.run_folder import default_out_dir, resume_command
    from cifar_cli.run_plan import plan_run, read_run_data
    from cifar_cli.runtime import Runtime, init_distributed, resolve_device

    resume, data_dir = expand(resume), expand(data_dir)
    checkpoint = load_checkpoint(resume, model) if resume else None
    torch_device = resolve_device(DeviceName(device).value)
    plan = plan_run(checkpoint, dict(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_split=val_split, weight_decay=weight_decay,
        label_smoothing=label_smoothing, ema=ema, lookahead=lookahead, tta=tta, affine_p=affine_p,
        cutout_p=cutout_p, tone_p=tone_p, aug_fade=aug_fade, mixup=mixup),
        test=test, augment_on=AugmentPlace(augment_on).value if augment_on else None, amp=amp, model=model,
        device=torch_device)
    if checkpoint is not None:
        warn_if_changed(plan.network, checkpoint, source_changed(checkpoint.model, plan.network))
    dist = init_distributed(torch_device)
    if dist.main:
        for note in plan.notes:
            err.print(f"note: {literal(note)}", soft_wrap=True)
    out_dir = expand(out_dir) or default_out_dir(resume)
    train_split, test_split = read_run_data(plan, data_dir_or_default(data_dir), download)
    console = err if as_json else out
    if dist.main:
        test_size = len(test_split) if test_split is not None else None
        console.print(train_header(plan, torch_device, dist.world, len(train_split), test_size, out_dir, resume),
                      soft_wrap=True)
    runtime = Runtime(workers=workers, amp=plan.choices.amp, compile=compile_model,
                      augment_on=plan.choices.augment_on)
    result = _run(plan, (train_split, test_split), out_dir, torch_device, runtime, checkpoint, dist, overwrite, console,
                  lambda saved: resume_command(saved, data_dir, model, DeviceName(device).value))
    if dist.main:
        print_json(result.to_dict()) if as_json else out.print(train_footer(result), soft_wrap=True)


def _run(plan: RunPlan, splits: tuple[Split, Split | None], out_dir: Path, device: torch.device, runtime: Runtime,
         checkpoint: Checkpoint | None, dist: Distributed, overwrite: bool, console: Console,
         resume_with: Callable[[Path], str]) -> Any:
    """The run itself, with live progress; a stop by a signal says what was saved and how to resume."""
    from cifar_cli.run_folder import what_is_saved
    from cifar_cli.runtime import shutdown_distributed
    from cifar_cli.training.loop import train as run_training
    from cifar_cli.training.session import TrainingInterrupted

    try:
        with RichTrainObserver(console, enabled=dist.main) as observer:
            result = run_training(plan.settings, *splits, out_dir, device, model_spec=plan.network, runtime=runtime,
                                  resume=checkpoint, observer=observer, dist=dist, overwrite=overwrite)
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


def train_header(plan: RunPlan, device: Any, world: int, train_size: int, test_size: int | None, out_dir: Path,
                 resume: Path | None) -> str:
    settings = plan.settings
    processes = f" x {world} processes" if world > 1 else ""
    held = f" / {settings.val_split:,} held-out" if settings.val_split else ""
    test = f" / {test_size:,} test images" if test_size is not None else " images (test set left out)"
    return (f"Training on [bold]{device}{processes}[/]: {literal(plan.network.describe())}, "
            f"{train_size - settings.val_split:,} train{held}{test}, {settings.epochs} "
            f"epoch{'s' * (settings.epochs != 1)}, batch {settings.batch_size}, lr {settings.lr}, seed {settings.seed}"
            + (f", EMA {settings.ema}" if settings.ema else "")
            + (f", lookahead {settings.lookahead}" if settings.lookahead else "")
            + (f", augmentation fading over the last {settings.aug_fade:.0%}" if settings.aug_fade else "")
            + (f", mixup {settings.mixup}" if settings.mixup else "")
            + (", flip TTA" if settings.tta else "")
            + f" -> {literal(out_dir)}" + (f" (resuming {literal(resume)})" if resume else ""))


def train_footer(result: Any) -> str:
    from cifar_cli.records import headline

    final, best = result.history[-1], result.history[result.best_epoch - 1]
    summed = headline(result.history)  # test accuracy, or held-out where the test set was left out
    held = f", held-out {100 * final.val_acc:.2f}%" if final.val_acc is not None and summed.key == "test_acc" else ""
    judge = result.best_by.removesuffix("_acc")
    return (f"Done: final {summed.name} accuracy [bold]{100 * summed.of(final):.2f}%[/]{held}; best epoch by "
            f"{judge} accuracy: {result.best_epoch} ({summed.name} {100 * summed.of(best):.2f}%). "
            f"Checkpoints and history.json in [bold]{literal(result.out_dir)}[/]")
