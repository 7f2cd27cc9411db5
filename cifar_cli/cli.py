"""The `cifar` command: parses options, calls the core modules, prints what they return.

Everything that came from the user or from a file is printed through `_literal`, never as Rich markup.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cifar_cli import __version__
from cifar_cli.errors import CifarError, shell_command
from cifar_cli.interrupts import NotedInterrupts, signal_arrived
from cifar_cli.settings import AUGMENT_PLACES, DEFAULT_MODEL, DEFAULTS, DEVICES, EVAL_BATCH_SIZE
from cifar_cli.terminal import console, literal

if TYPE_CHECKING:  # the commands import the heavy modules (torch) only when they run
    import torch
    from torch import nn

    from cifar_cli.checkpoint import Checkpoint
    from cifar_cli.models import ModelSpec

app = typer.Typer(
    name="cifar",
    help="Train, inspect and evaluate small convolutional networks on CIFAR-10.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = console()
err = console(stderr=True)
_literal = literal  # every path, name or message from the user or a file is printed through it


# Options shared by several commands, declared once.
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="Folder that contains cifar-10-batches-py (default: $CIFAR_DATA_DIR or ~/.cache/cifar-cli).",
    file_okay=False, show_default=False)]
Download = Annotated[bool, typer.Option("--download/--no-download", help="Fetch CIFAR-10 (md5-checked) if missing.")]
DeviceName = Enum("DeviceName", {name: name for name in DEVICES}, type=str)
AugmentPlace = Enum("AugmentPlace", {name: name for name in AUGMENT_PLACES}, type=str)
Device = Annotated[DeviceName, typer.Option("--device", help="Where to run: auto picks CUDA, then MPS, then CPU.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=0, show_default="0 on the CPU, which the training uses; up to 8 per GPU",
    help="Data loader worker processes; changes speed, not results.")]
ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=DEFAULT_MODEL,
    help="The network: a preset (cifar models lists them) or your own, as FILE.py:NAME or package.module:NAME "
    "(a class or function returning an nn.Module).")]
PngOut = Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.", dir_okay=False)]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed (results are reproducible on CPU).")]
TTA = Annotated[bool | None, typer.Option(
    "--tta/--no-tta", show_default="on" if DEFAULTS.tta else "off",
    help="Flip test-time augmentation: average the logits of each image and its mirror image.")]


def _fails_cleanly(command: Callable) -> Callable:
    """A CifarError (bad input) becomes one line on stderr and exit code 2, never a traceback. So does code
    the command ran (a user's network) ending the program: SystemExit, or a KeyboardInterrupt that no real
    Ctrl-C caused. Under --json, stdout holds the JSON alone: whatever else prints goes to stderr.

    Under torchrun every process meets the same error; only the first one says it.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with NotedInterrupts(), _stdout_for_json_only(kwargs.get("as_json", False)), _warnings_in_one_line():
                return command(*args, **kwargs)
        except CifarError as e:
            _error(str(e))
        except (OSError, SystemExit) as e:
            if (lost := _output_lost(e)) is None:
                if isinstance(e, OSError):
                    raise
                _error(_ended_by_code(e, kwargs.get("model")))
            else:
                _stdout_lost(lost)
        except (KeyboardInterrupt, GeneratorExit) as e:
            if isinstance(e, KeyboardInterrupt) and signal_arrived():
                raise
            _error(_ended_by_code(e, kwargs.get("model")))
        raise typer.Exit(2) from None

    return wrapper


def _ended_by_code(e: BaseException, model: str | None) -> str:
    """Code the command ran, not a real signal, tried to end the program (user code called outside
    models.spec.user_code, which words it more exactly)."""
    what = f"called sys.exit({'' if e.code is None else repr(e.code)})" if isinstance(e, SystemExit) \
        else f"raised {type(e).__name__}"
    who = f"--model {model}: its code" if model and ":" in model else "code this command ran"
    return f"{who} {what}, which ends the program; a network must raise an exception instead"


def _error(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        err.print(f"[bold red]error:[/] {_literal(message)}", soft_wrap=True)


def _output_lost(e: BaseException) -> OSError | None:
    """The error that kept our output from stdout (a full disk, a closed pipe), if that is what `e` is."""
    if isinstance(e, SystemExit) and isinstance(e.__context__, BrokenPipeError):
        return e.__context__  # Rich gives up on a closed pipe this way
    lost = (errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EFBIG, errno.EIO)
    return e if isinstance(e, OSError) and e.errno in lost and e.filename is None else None


def _stdout_lost(e: OSError) -> None:
    """Say so on stderr once, and send what stdout still holds nowhere, so that Python's flush at exit
    does not fail again with a traceback."""
    _error(f"cannot write to standard output: {e.strerror or e}")
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test's captured output)
        pass


@contextlib.contextmanager
def _warnings_in_one_line() -> Iterator[None]:
    """A library's warning (torch, Pillow, Albumentations) is shown as one 'warning:' line, not as Python's
    two lines naming a file and line deep inside the library."""
    def show(message: Warning | str, category: type, *_: Any, **__: Any) -> None:
        text = str(message).strip().splitlines()
        if os.environ.get("RANK", "0") == "0":
            err.print(f"warning: {_literal(text[0] if text else category.__name__)}", soft_wrap=True)

    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _count(n: int, noun: str) -> str:
    """'1 epoch', '2 epochs', '1,000 images'."""
    return f"{n:,} {noun}{'s' * (n != 1)}"


_json_stdout: list[Any] = []  # while a --json command runs: the real stdout, which only its JSON reaches


@contextlib.contextmanager
def _stdout_for_json_only(as_json: bool) -> Iterator[None]:
    """Under --json, anything printed by code other than `_print_json` (a user's network calling print,
    a library) goes to stderr, so that stdout stays one valid JSON document."""
    if not as_json:
        yield
        return
    _json_stdout.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stdout.pop()


def _strict(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _print_json(data: Any) -> None:
    stdout = _json_stdout[-1] if _json_stdout else sys.stdout
    stdout.write(json.dumps(_strict(data), indent=2, allow_nan=False) + "\n")


def _data_dir(data_dir: Path | None) -> Path:
    from cifar_cli.data import default_data_dir

    return data_dir.expanduser() if data_dir is not None else default_data_dir()


def _expand(path: Path | None) -> Path | None:
    """'~/runs' as the shell would have it, for paths that reach us quoted."""
    return path.expanduser() if path is not None else None


def _version(value: bool) -> None:
    if value:
        out.print(f"cifar-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Train, inspect and evaluate small convolutional networks on CIFAR-10."""


@app.command("models")
@_fails_cleanly
def models_command(as_json: Json = False) -> None:
    """The built-in networks: parameters, receptive field and the design rules of each."""
    from cifar_cli.models import PRESETS, create_model, preset_spec
    from cifar_cli.receptive_field import total_receptive_field
    from cifar_cli.report import presets_table
    from cifar_cli.rules import check_rules, count_parameters

    rows = []
    for name, preset in PRESETS.items():
        model = create_model(preset_spec(name))
        rules = check_rules(model)
        rows.append({"name": name, "parameters": count_parameters(model),
                     "receptive_field": total_receptive_field(model), "passed": all(r.passed for r in rules),
                     "failed": [r.name for r in rules if not r.passed], "description": preset.description})
    if as_json:
        _print_json({"models": rows})
    else:
        out.print(presets_table(rows))


def _summary_help() -> str:
    from rich.markup import escape

    from cifar_cli.rulebook import RULES

    meanings = "\n\n".join(f"- {escape(rule.name)}: {escape(rule.meaning)}." for rule in RULES)
    return ("Layers, output shapes and parameter counts of the network, and a check of the design rules.\n\n"
            "Each rule is judged on what one forward pass computes, whether written as modules, F.* calls or "
            "tensor methods; a failing rule says how to fix it. Exits 1, naming each failing rule, when the "
            f"network breaks one. The rules (docs/rules.md has the details):\n\n{meanings}")


@app.command(help=_summary_help())
@_fails_cleanly
def summary(model: ModelOption = None, as_json: Json = False) -> None:
    from cifar_cli.models import create_model, resolve_model
    from cifar_cli.report import layer_summary, rules_table
    from cifar_cli.rules import check_rules, count_parameters

    spec = resolve_model(model)
    network = create_model(spec)
    rules = check_rules(network)
    table, layers = layer_summary(network)
    failed = [r.name for r in rules if not r.passed]
    if as_json:
        _print_json({"model": spec.to_dict(), "parameters": count_parameters(network), "layers": layers,
                     "rules": [asdict(r) for r in rules], "passed": not failed})
    else:
        out.print(_literal(table), soft_wrap=True)
        out.print(rules_table(rules))
        out.print("[green]All rules pass.[/]" if not failed
                  else f"[bold red]Fails {len(failed)} rule{'s' * (len(failed) > 1)}:[/] {_literal('; '.join(failed))}")
        for rule in rules:
            if not rule.passed:
                out.print(f"  [bold]fix[/] {_literal(rule.name)}: {_literal(rule.fix)}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command("receptive-field")
@_fails_cleanly
def receptive_field_command(model: ModelOption = None, as_json: Json = False) -> None:
    """Receptive field layer by layer, computed by walking the network's real modules."""
    from cifar_cli.models import create_model, resolve_model
    from cifar_cli.receptive_field import receptive_field
    from cifar_cli.report import receptive_field_table

    found = receptive_field(create_model(resolve_model(model)))
    if as_json:
        _print_json({"layers": [asdict(r) for r in found.rows], "total": found.total})
    else:
        out.print(receptive_field_table(found.rows))
        out.print(f"Total receptive field: [bold]{found.total}[/] pixels (of a 32x32 image)")


@app.command("augment-preview")
@_fails_cleanly
def augment_preview(
    out_file: PngOut = Path("augment-preview.png"),
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=64, help="Training images, one row each.")] = 8,
    views: Annotated[int, typer.Option("--views", "-k", min=1, max=32, help="Augmented views of each.")] = 6,
    image: Annotated[list[Path] | None, typer.Option(
        "--image", help="Use this picture instead of the dataset (repeatable).", dir_okay=False)] = None,
    seed: Seed = 0,
    affine_p: AffineP = None,
    cutout_p: CutoutP = None,
    tone_p: ToneP = None,
    data_dir: DataDir = None,
    download: Download = False,
    as_json: Json = False,
) -> None:
    """A PNG grid of real images and what the training pipeline makes of them (with train's odds, if given)."""
    import numpy as np

    from cifar_cli.augment import describe, preview, train_pipeline
    from cifar_cli.data import CLASSES, load_split
    from cifar_cli.files import check_output
    from cifar_cli.pictures import load_image
    from cifar_cli.report import write_image_grid

    settings = DEFAULTS.with_options(affine_p=affine_p, cutout_p=cutout_p, tone_p=tone_p)
    settings.validate()
    out_file = check_output(out_file, ".png", "--out")
    if image:
        images = np.stack([load_image(p) for p in image])
        labels = [p.name for p in image]
    else:
        split = load_split(_data_dir(data_dir), train=True, download_missing=download)
        pick = np.random.default_rng(seed).choice(len(split), size=min(count, len(split)), replace=False)
        images, labels = split.images[pick], [CLASSES[i] for i in split.labels[pick]]
    write_image_grid(preview(images, labels, views, seed, settings.augment_odds), out_file)
    pipeline = describe(train_pipeline(odds=settings.augment_odds))
    if as_json:
        _print_json({"out": str(out_file), "images": labels, "views": views, "seed": seed, "pipeline": pipeline})
    else:
        out.print("[bold]Training pipeline[/]")
        for line in pipeline:
            out.print(f"  {_literal(line)}", soft_wrap=True)
        out.print(f"Wrote {_count(len(labels), 'image')} x {_count(views, 'view')} to [bold]{_literal(out_file)}[/]",
                  soft_wrap=True)


class _RichTrainObserver:
    """Draws the engine's progress: a live bar per epoch, then one summary line."""

    def __init__(self, console: Console, enabled: bool = True):
        from cifar_cli.report import epoch_line

        self.console, self.epoch_line = console, epoch_line
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not enabled,
        )
        self.task = None
        self.epochs = 0

    def __enter__(self) -> _RichTrainObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epochs = epochs
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, completed=done, stats="")

    def step(self, step: int, loss: float, acc: float) -> None:
        self.progress.update(self.task, completed=step, stats=f"loss {loss:.4f} acc {100 * acc:5.2f}%")

    def epoch_end(self, record: Any) -> None:
        self.progress.console.print(self.epoch_line(record, self.epochs), soft_wrap=True)

    def notice(self, message: str) -> None:
        self.progress.console.print(_literal(message), soft_wrap=True)


def _setting_option(name: str, flag: str, help: str, kind: type = int) -> Any:
    """A train option whose default lives in settings.DEFAULTS; None means "not given" (keep a resumed run's)."""
    return Annotated[kind | None, typer.Option(flag, help=help, show_default=str(getattr(DEFAULTS, name)))]


# How often the augmentation applies each random transform: train's settings, which augment-preview shows.
AffineP = _setting_option("affine_p", "--affine-p", "Probability of the pipeline's ShiftScaleRotate for each image "
                          "(the assignment's reference network trained with 0.3).", float)
CutoutP = _setting_option("cutout_p", "--cutout-p", "Probability of its CoarseDropout (one 16x16 hole filled with "
                          "the mean).", float)
ToneP = _setting_option("tone_p", "--tone-p", "Probability of its RandomBrightnessContrast (the reference "
                        "network: 0.2).", float)


@app.command()
@_fails_cleanly
def train(
    epochs: _setting_option("epochs", "--epochs", "Epochs to train.") = None,
    batch_size: _setting_option("batch_size", "--batch-size", "Images per step (per process under torchrun).") = None,
    lr: _setting_option("lr", "--lr", "Peak learning rate of the one-cycle schedule.", float) = None,
    seed: _setting_option("seed", "--seed", "Random seed; the same seed gives the same result on the CPU.") = None,
    val_split: _setting_option("val_split", "--val-split", "Hold out this many training images (the same ones for "
                               "every seed) and pick the best epoch by them: tune on these, keep the test set for "
                               "the final figure.") = None,
    weight_decay: _setting_option("weight_decay", "--weight-decay", "L2 weight decay of the convolution and "
                                  "linear weights (not BatchNorm or biases).", float) = None,
    label_smoothing: _setting_option("label_smoothing", "--label-smoothing", "Label smoothing of the training "
                                     "loss (0: off).", float) = None,
    ema: _setting_option("ema", "--ema", "Evaluate and save an exponential moving average of the weights with "
                         "this per-step decay, e.g. 0.999 (0: off).", float) = None,
    lookahead: _setting_option("lookahead", "--lookahead", "Lookahead, as in airbench: every 5 steps, pull slow "
                               "weights toward the trained ones and go on from them, keeping up to this per-step "
                               "decay by the end (ramped in as progress cubed), e.g. 0.95 (0: off). The slow "
                               "weights are evaluated and saved.", float) = None,
    affine_p: AffineP = None,
    cutout_p: CutoutP = None,
    tone_p: ToneP = None,
    aug_fade: _setting_option("aug_fade", "--aug-fade", "Fade the augmentation out over this last fraction of the "
                              "run: the odds of its three random transforms fall linearly to zero, batch by batch "
                              "(the flip stays); 0: off.", float) = None,
    mixup: _setting_option("mixup", "--mixup", "Mixup: blend each batch with a shuffled copy of itself, the "
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
    from cifar_cli.data import load_split
    from cifar_cli.models import resolve_model
    from cifar_cli.run_folder import default_out_dir, resume_argv
    from cifar_cli.run_state import plan_run
    from cifar_cli.runtime import Runtime, init_distributed, resolve_device, shutdown_distributed
    from cifar_cli.training.loop import train as run_training
    from cifar_cli.training.session import TrainingInterrupted

    resume, data_dir = _expand(resume), _expand(data_dir)
    checkpoint = load_checkpoint(resume, model) if resume else None
    spec = _given_model(model, checkpoint)
    torch_device = resolve_device(DeviceName(device).value)
    plan = plan_run(checkpoint, dict(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_split=val_split, weight_decay=weight_decay,
        label_smoothing=label_smoothing, ema=ema, lookahead=lookahead, tta=tta, affine_p=affine_p,
        cutout_p=cutout_p, tone_p=tone_p, aug_fade=aug_fade, mixup=mixup),
        test=test, augment_on=AugmentPlace(augment_on).value if augment_on else None, amp=amp, model=spec,
        device=torch_device)
    settings, test = plan.settings, plan.choices.test
    dist = init_distributed(torch_device)
    if dist.main:
        for note in plan.notes:
            err.print(f"note: {_literal(note)}", soft_wrap=True)
    out_dir = _expand(out_dir) or default_out_dir(resume)
    root = _data_dir(data_dir)
    train_split = load_split(root, train=True, download_missing=download)
    test_split = load_split(root, train=False, download_missing=download) if test else None
    settings.validate(len(train_split))

    console = err if as_json else out
    if dist.main:
        name = (spec or (checkpoint.model if checkpoint else resolve_model(None))).describe()
        test_size = len(test_split) if test_split is not None else None
        console.print(_train_header(settings, name, torch_device, dist.world, len(train_split), test_size,
                                    out_dir, resume), soft_wrap=True)
    runtime = Runtime(workers=workers, amp=plan.choices.amp, compile=compile_model,
                      augment_on=plan.choices.augment_on)
    try:
        with _RichTrainObserver(console, enabled=dist.main) as observer:
            result = run_training(settings, train_split, test_split, out_dir, torch_device, model_spec=spec,
                                  runtime=runtime, resume=checkpoint, observer=observer, dist=dist,
                                  overwrite=overwrite)
        shutdown_distributed(together=True)
    except TrainingInterrupted as stop:
        shutdown_distributed(together=True)
        if dist.main:
            where = f"Stopped by {signal.Signals(stop.signum).name} at epoch {stop.epoch}, step {stop.step}; "
            if stop.checkpoint is None:
                err.print(f"{where}{_literal(stop.kept)}.", soft_wrap=True)
            else:
                again = shell_command(resume_argv(stop.checkpoint, data_dir, model, DeviceName(device).value))
                err.print(f"{where}saved {_literal(stop.checkpoint)}. Resume with: {_literal(again)}", soft_wrap=True)
        raise typer.Exit(128 + stop.signum) from None
    except KeyboardInterrupt:
        if not signal_arrived():
            raise  # raised by code the run called (a network's hook), not a Ctrl-C: _fails_cleanly says so
        last = out_dir / "last.safetensors"
        kept = f"{_literal(last)} holds the last saved state" if last.is_file() else "no checkpoint was written"
        err.print(f"Interrupted; {kept}.", soft_wrap=True)  # before training began, or a second Ctrl-C
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        shutdown_distributed()
    if dist.main:
        _print_json(result.to_dict()) if as_json else out.print(_train_footer(result), soft_wrap=True)


def _train_header(settings: Any, model: str, device: Any, world: int, train_size: int, test_size: int | None,
                  out_dir: Path, resume: Path | None) -> str:
    processes = f" x {world} processes" if world > 1 else ""
    held = f" / {settings.val_split:,} held-out" if settings.val_split else ""
    test = f" / {test_size:,} test images" if test_size is not None else " images (test set left out)"
    return (f"Training on [bold]{device}{processes}[/]: {_literal(model)}, {train_size - settings.val_split:,} "
            f"train{held}{test}, {settings.epochs} epoch{'s' * (settings.epochs != 1)}, "
            f"batch {settings.batch_size}, lr {settings.lr}, seed {settings.seed}"
            + (f", EMA {settings.ema}" if settings.ema else "")
            + (f", lookahead {settings.lookahead}" if settings.lookahead else "")
            + (f", augmentation fading over the last {settings.aug_fade:.0%}" if settings.aug_fade else "")
            + (f", mixup {settings.mixup}" if settings.mixup else "")
            + (", flip TTA" if settings.tta else "")
            + f" -> {_literal(out_dir)}" + (f" (resuming {_literal(resume)})" if resume else ""))


def _train_footer(result: Any) -> str:
    from cifar_cli.records import headline

    final, best = result.history[-1], result.history[result.best_epoch - 1]
    summed = headline(result.history)  # test accuracy, or held-out where the test set was left out
    held = f", held-out {100 * final.val_acc:.2f}%" if final.val_acc is not None and summed.key == "test_acc" else ""
    judge = result.best_by.removesuffix("_acc")
    return (f"Done: final {summed.name} accuracy [bold]{100 * summed.of(final):.2f}%[/]{held}; best epoch by "
            f"{judge} accuracy: {result.best_epoch} ({summed.name} {100 * summed.of(best):.2f}%). "
            f"Checkpoints and history.json in [bold]{_literal(result.out_dir)}[/]")


CheckpointPath = Annotated[Path | None, typer.Option(
    "--checkpoint", "-c", dir_okay=False, show_default="the one shipped with cifar-cli",
    help="A .safetensors checkpoint written by cifar train.")]


def _given_model(model: str | None, checkpoint: Checkpoint | None) -> ModelSpec | None:
    """--model as given (None when not), with a warning when it is the user's own network and its source
    file has changed since the checkpoint was written: the weights may still fit, so it goes on."""
    from cifar_cli.models import resolve_model, source_changed

    spec = resolve_model(model) if model else None
    if checkpoint is not None and spec is not None and source_changed(checkpoint.model, spec):
        err.print(f"warning: {_literal(spec.name)} has changed since {_literal(checkpoint.source)} was written "
                  "(its source file's hash differs); going on with the file as it is now", soft_wrap=True)
    return spec


def _load_model(path: Path | None, device: str, tta: bool | None,
                model: str | None) -> tuple[Path, Checkpoint, nn.Module, torch.device, bool]:
    """What eval and predict share: the checkpoint (the packaged one by default), its network on the
    device (a user network needs the user's --model), and the TTA choice (the training default unless given)."""
    from cifar_cli.checkpoint import PACKAGED_CHECKPOINT, load_checkpoint, model_from_checkpoint
    from cifar_cli.runtime import resolve_device

    if path is None:
        if not PACKAGED_CHECKPOINT.is_file():
            raise CifarError(f"no checkpoint given and the packaged one is missing ({PACKAGED_CHECKPOINT}); "
                             "pass a .safetensors file written by cifar train")
        path = PACKAGED_CHECKPOINT
    ckpt = load_checkpoint(path, model)  # expands ~ itself
    network = model_from_checkpoint(ckpt, path, given=_given_model(model, ckpt))
    torch_device = resolve_device(DeviceName(device).value)
    return path, ckpt, network.to(torch_device), torch_device, DEFAULTS.tta if tta is None else tta


class EvalImages(str, Enum):
    test = "test"
    train = "train"
    held_out = "held-out"


@app.command("eval")
@_fails_cleanly
def eval_command(
    checkpoint: Annotated[Path | None, typer.Argument(
        help="A .safetensors checkpoint written by cifar train [default: the one shipped with cifar-cli].",
        dir_okay=False, show_default=False)] = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = DeviceName.auto,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Images per forward pass; changes speed, not results.")] = EVAL_BATCH_SIZE,
    tta: TTA = None,
    model: ModelOption = None,
    images: Annotated[EvalImages, typer.Option(
        "--images", help="The test set; the training images it learned from, without augmentation (how closely "
                         "the network fits them, next to how well it generalises); or the images a --val-split "
                         "run held out (from its last.safetensors).")
    ] = EvalImages.test,
    as_json: Json = False,
) -> None:
    """Loss, accuracy, per-class results and the confusion matrix of a checkpoint on the test set
    (with --images train: on the training images it learned from, un-augmented; --images held-out: on
    those its --val-split run held out).

    A checkpoint of a preset rebuilds its network from the file alone; one of your own network needs
    --model FILE.py:NAME again (a checkpoint is never a reason to import code).
    """
    from cifar_cli.data import eval_split
    from cifar_cli.report import confusion_table, per_class_table
    from cifar_cli.run_state import images_of_run
    from cifar_cli.training.evaluation import evaluate

    checkpoint, ckpt, network, torch_device, tta = _load_model(checkpoint, device, tta, model)
    held_out, trained_on = images_of_run(ckpt)
    split = eval_split(_data_dir(data_dir), images.value, held_out, download, trained_on)
    result = evaluate(network, split, torch_device, batch_size=batch_size, classes=ckpt.classes,
                      mean=ckpt.mean, std=ckpt.std, tta=tta, name=str(checkpoint))
    if as_json:
        _print_json({"checkpoint": str(checkpoint), "epoch": ckpt.epoch, "images": len(split),
                     "images_from": images.value, "tta": tta, **result.to_dict()})
        return
    out.print(Panel.fit(f"{_literal(checkpoint)}  ({_literal(ckpt.model.describe())}, epoch {ckpt.epoch}, "
                        f"cifar-cli {_literal(ckpt.version)})\n"
                        f"{images.value} images {len(split):,}{' + mirror images' if tta else ''}   "
                        f"loss [bold]{result.loss:.4f}[/]   "
                        f"accuracy [bold]{100 * result.accuracy:.2f}%[/]"))
    out.print(per_class_table(result))
    out.print(confusion_table(result))


@app.command()
@_fails_cleanly
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...); each is resized to 32x32.",
                                                 dir_okay=False, show_default=False)],
    checkpoint: CheckpointPath = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="How many classes to show per image.")] = 3,
    device: Device = DeviceName.auto,
    tta: TTA = None,
    model: ModelOption = None,
    as_json: Json = False,
) -> None:
    """The most likely classes of each image, with their probabilities."""
    import numpy as np

    from cifar_cli.pictures import load_image
    from cifar_cli.training.evaluation import predict as class_probabilities

    path, ckpt, network, torch_device, tta = _load_model(checkpoint, device, tta, model)
    pixels = np.stack([load_image(p) for p in images])
    probs = class_probabilities(network, pixels, torch_device, ckpt.mean, ckpt.std, tta=tta)
    best = probs.topk(min(top, probs.shape[1]), dim=1)
    results = [{"image": str(p), "top": [{"class": ckpt.classes[i], "probability": float(v)}
                                          for v, i in zip(values.tolist(), indices.tolist())]}
               for p, values, indices in zip(images, best.values, best.indices)]
    if as_json:
        _print_json({"checkpoint": str(path), "predictions": results})
        return
    for r in results:
        guesses = "   ".join(f"{_literal(t['class'])} [bold]{100 * t['probability']:.1f}%[/]" for t in r["top"])
        out.print(f"{_literal(r['image'])}: {guesses}", soft_wrap=True)


CheckpointArg = Annotated[Path | None, typer.Argument(
    help="A .safetensors checkpoint written by cifar train.", dir_okay=False,
    show_default="the one shipped with cifar-cli")]


@app.command()
@_fails_cleanly
def mistakes(
    checkpoint: CheckpointArg = None,
    out_file: PngOut = Path("mistakes.png"),
    count: Annotated[int, typer.Option("--count", "-n", help="Mistakes to show, most confident first.")] = 25,
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Only images of this true class.", show_default="all classes")] = None,
    tta: TTA = None,
    model: ModelOption = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = DeviceName.auto,
    as_json: Json = False,
) -> None:
    """A grid of misclassified test images, the most confident mistakes first, and the common confusions."""
    from cifar_cli.data import load_split
    from cifar_cli.explain import common_confusions, find_mistakes
    from cifar_cli.files import check_output
    from cifar_cli.report import write_mistakes_grid

    out_file = check_output(out_file, ".png", "--out")
    if count < 1:
        raise CifarError(f"-n must be at least 1, not {count}")
    path, ckpt, network, torch_device, tta = _load_model(checkpoint, device, tta, model)
    split = load_split(_data_dir(data_dir), train=False, download_missing=download)
    if class_name is not None and class_name not in ckpt.classes:
        raise CifarError(f"--class {class_name}: choose one of {', '.join(ckpt.classes)}")
    found = find_mistakes(network, split, torch_device, ckpt.mean, ckpt.std, tta=tta)
    shown = [m for m in found if class_name is None or ckpt.classes[m.true] == class_name][:count]
    name = ckpt.classes.__getitem__
    titles = [f"{name(m.true)} -> {name(m.predicted)} ({100 * m.probability:.0f}%)" for m in shown]
    if shown:
        write_mistakes_grid(split.images[[m.index for m in shown]], titles, out_file, f"{len(shown)} of "
                            f"{len(found):,} mistakes on {len(split):,} test images, most confident first\n"
                            "each titled: true class -> predicted class (the network's confidence)")
    confusions = [{"true": name(t), "predicted": name(p), "count": n} for t, p, n in common_confusions(found)]
    if as_json:
        _print_json({"checkpoint": str(path), "out": str(out_file) if shown else None, "images": len(split),
                     "mistakes": len(found),
                     "tta": tta, "shown": [{"index": m.index, "true": name(m.true), "predicted": name(m.predicted),
                                            "probability": m.probability} for m in shown],
                     "confusions": confusions})
        return
    wrote = f"; wrote the {len(shown)} most confident to [bold]{_literal(out_file)}[/]" if shown else ": no picture"
    out.print(f"{len(found):,} of {_count(len(split), 'test image')} misclassified{wrote}", soft_wrap=True)
    out.print("Most common confusions:")
    for c in confusions:
        out.print(f"  {_literal(c['true'])} -> {_literal(c['predicted'])}: {c['count']}")


class CamTarget(str, Enum):
    predicted = "predicted"
    true = "true"


@app.command()
@_fails_cleanly
def gradcam(
    images: Annotated[list[Path] | None, typer.Argument(
        help="Picture files to explain (or use --mistakes).", dir_okay=False, show_default=False)] = None,
    checkpoint: CheckpointPath = None,
    from_mistakes: Annotated[int | None, typer.Option(
        "--mistakes", help="Explain this many misclassified test images, most confident first.",
        show_default=False)] = None,
    out_file: PngOut = Path("gradcam.png"),
    layer: Annotated[str | None, typer.Option(
        "--layer", help="The layer to explain, by name (cifar receptive-field shows them).",
        show_default="the last convolution with an output of 8x8 or more")] = None,
    opacity: Annotated[float, typer.Option("--opacity", min=0.0, max=1.0, help="Of the heat map over the image.")
                       ] = 0.5,
    target: Annotated[CamTarget, typer.Option("--target", help="Explain the predicted class or the true one.")
                      ] = CamTarget.predicted,
    model: ModelOption = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = DeviceName.auto,
    as_json: Json = False,
) -> None:
    """Grad-CAM: where in each image the network looked for its answer (image, heat map, overlay)."""
    from cifar_cli.explain import MIN_CAM_SIZE, cam_layer
    from cifar_cli.explain import gradcam as cam_maps
    from cifar_cli.files import check_output
    from cifar_cli.report import write_gradcam_sheet

    out_file = check_output(out_file, ".png", "--out")
    path, ckpt, network, torch_device, _ = _load_model(checkpoint, device, False, model)
    pixels, titles, targets, rows = _cam_inputs(images, from_mistakes, target, network, ckpt, torch_device,
                                                data_dir, download)
    layer, size = cam_layer(network, layer)
    if min(size) < MIN_CAM_SIZE:
        err.print(f"warning: {_literal(layer)} is {size[0]}x{size[1]}; a heat map from so few cells says little "
                  "about where the network looked", soft_wrap=True)
    maps = cam_maps(network, pixels, layer, targets, torch_device, ckpt.mean, ckpt.std)
    write_gradcam_sheet(pixels, maps, titles, out_file,
                        f"Grad-CAM of layer {layer} ({size[0]}x{size[1]}), for the {target.value} class", opacity)
    if as_json:
        _print_json({"checkpoint": str(path), "out": str(out_file), "layer": layer, "layer_size": list(size),
                     "target": target.value, "images": rows})
        return
    out.print(f"Wrote Grad-CAM of {_count(len(rows), 'image')} from layer {_literal(layer)} ({size[0]}x{size[1]}) to "
              f"[bold]{_literal(out_file)}[/]", soft_wrap=True)


def _cam_inputs(images: list[Path] | None, from_mistakes: int | None, target: CamTarget, network: Any, ckpt: Any,
                device: Any, data_dir: Path | None, download: bool) -> tuple[Any, list[str], list[int], list[dict]]:
    """The pictures gradcam explains, their titles, the class to explain for each, and rows for --json."""
    import numpy as np

    from cifar_cli.data import load_split
    from cifar_cli.explain import find_mistakes
    from cifar_cli.pictures import load_image
    from cifar_cli.training.evaluation import predict as class_probabilities

    if bool(images) == (from_mistakes is not None):
        raise CifarError("give picture files or --mistakes N, one of the two")
    if from_mistakes is not None:
        if from_mistakes < 1:
            raise CifarError(f"--mistakes must be at least 1, not {from_mistakes}")
        split = load_split(_data_dir(data_dir), train=False, download_missing=download)
        shown = find_mistakes(network, split, device, ckpt.mean, ckpt.std, tta=DEFAULTS.tta)[:from_mistakes]
        if not shown:
            raise CifarError(f"the network misclassifies none of the {len(split):,} test images: nothing to explain")
        pixels, labels = split.images[[m.index for m in shown]], [m.true for m in shown]
        names = [f"test #{m.index}" for m in shown]
    else:
        if target is CamTarget.true:
            raise CifarError("--target true needs the true class: use --mistakes (picture files have none)")
        pixels, labels, names = np.stack([load_image(p) for p in images]), None, [p.name for p in images]
    # as `cifar predict` and `cifar mistakes` see them (flip TTA by default), so titles agree across commands
    probs = class_probabilities(network, pixels, device, ckpt.mean, ckpt.std, tta=DEFAULTS.tta)
    predicted = probs.argmax(1).tolist()
    targets = labels if target is CamTarget.true else predicted
    rows, titles = [], []
    for i, name in enumerate(names):
        guess = f"{ckpt.classes[predicted[i]]} {100 * float(probs[i, predicted[i]]):.0f}%"
        titles.append(f"{name}: {ckpt.classes[labels[i]]} -> {guess}" if labels else f"{name}: {guess}")
        rows.append({"image": name, "predicted": ckpt.classes[predicted[i]],
                     "probability": float(probs[i, predicted[i]]), "explained": ckpt.classes[targets[i]],
                     **({"true": ckpt.classes[labels[i]]} if labels else {})})
    return pixels, titles, targets, rows


@app.command("lr-find")
@_fails_cleanly
def lr_find(
    model: ModelOption = None,
    out_file: PngOut = Path("lr.png"),
    start: Annotated[float, typer.Option("--start", help="The first learning rate.")] = 1e-5,
    end: Annotated[float, typer.Option("--end", help="The last learning rate.")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", help="Mini-batches; bounds the time it takes.")] = 200,
    batch_size: _setting_option("batch_size", "--batch-size", "Images per step.") = None,
    seed: _setting_option("seed", "--seed", "Random seed.") = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = DeviceName.auto,
    as_json: Json = False,
) -> None:
    """Learning-rate range test: train from fresh weights with the lr growing each mini-batch, plot the loss,
    and suggest the one-cycle peak (--lr). Touches no run folder."""
    from cifar_cli.data import load_split
    from cifar_cli.files import check_output
    from cifar_cli.models import resolve_model
    from cifar_cli.report import write_lr_plot
    from cifar_cli.runtime import resolve_device
    from cifar_cli.training.lr_find import check_lr_range, lr_range_test

    out_file = check_output(out_file, ".png", "--out")
    check_lr_range(start, end, steps)
    settings = DEFAULTS.with_options(batch_size=batch_size, seed=seed)
    settings.validate()
    torch_device = resolve_device(DeviceName(device).value)
    split = load_split(_data_dir(data_dir), train=True, download_missing=download)
    console = err if as_json else out
    console.print(f"Range test: lr {start:g} -> {end:g} over at most {steps} mini-batches of {settings.batch_size}")
    finding = lr_range_test(settings, resolve_model(model), split, torch_device, start, end, steps)
    write_lr_plot(finding, out_file, DEFAULTS.lr)
    if as_json:
        _print_json({"out": str(out_file), "suggestion": finding.suggestion, "lowest_loss_lr": finding.lowest,
                     "diverged_at": finding.diverged_at, "how": finding.how, "default_lr": DEFAULTS.lr,
                     "lrs": finding.lrs, "losses": finding.losses, "smoothed": finding.smoothed})
        return
    stop = f"; the loss exploded at lr {finding.diverged_at:.3g}" if finding.diverged_at else ""
    said = (f"No suggested peak lr: {finding.how}" if finding.suggestion is None
            else f"Suggested peak lr: [bold]{finding.suggestion:.3g}[/] ({finding.how}){stop}")
    out.print(f"{said}. The default --lr is {DEFAULTS.lr:g}. Wrote [bold]{_literal(out_file)}[/]", soft_wrap=True)


@app.command()
@_fails_cleanly
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder, or its history.json.", show_default=False)],
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", dir_okay=False, show_default=False,
        help="PNG file to write [default: curves.png next to history.json].")] = None,
    title: Annotated[str, typer.Option("--title", help="A heading for the picture.")] = "",
    as_json: Json = False,
) -> None:
    """Training curves (loss and accuracy per epoch) from a run's history.json, as a PNG."""
    from cifar_cli.files import check_output
    from cifar_cli.records import headline
    from cifar_cli.report import write_training_curves
    from cifar_cli.run_folder import read_history

    run = run.expanduser()
    history = read_history(run)
    out_file = check_output(out_file or (run if run.is_dir() else run.parent) / "curves.png", ".png", "--out")
    write_training_curves(history, out_file, title)
    summed = headline(history)  # test accuracy, or held-out where the run left the test set out
    last, best = history[-1], max(history, key=summed.of)
    if as_json:
        _print_json({"out": str(out_file), "epochs": len(history), "final_test_acc": last.test_acc,
                     "best_test_acc": best.test_acc, "final_val_acc": last.val_acc, "best_by": summed.key,
                     "best_acc": summed.of(best), "best_epoch": best.epoch})
        return
    out.print(f"Wrote {_literal(out_file)}: {_count(len(history), 'epoch')}, final {summed.name} accuracy "
              f"{100 * summed.of(last):.2f}%, best {100 * summed.of(best):.2f}% (epoch {best.epoch})", soft_wrap=True)


@app.command()
@_fails_cleanly
def convert(
    source: Annotated[Path, typer.Argument(help="A PyTorch .pt/.pth file holding this network's state_dict.",
                                           dir_okay=False, show_default=False)],
    target: Annotated[Path, typer.Argument(help="The .safetensors checkpoint to write.", dir_okay=False,
                                           show_default=False)],
    model: ModelOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace TARGET if it exists.")] = False,
) -> None:
    """Convert a PyTorch .pt/.pth state_dict of a network (--model) to a .safetensors checkpoint, safely.

    The file is read with torch.load(weights_only=True), which refuses pickles that would run code.
    """
    from cifar_cli.checkpoint import convert_pytorch_checkpoint
    from cifar_cli.files import check_output
    from cifar_cli.models import resolve_model

    target = check_output(target, ".safetensors", "target")
    if target.exists() and not overwrite and target.resolve() != source.expanduser().resolve():
        raise CifarError(f"{target} exists; pass --overwrite to replace it")
    ckpt = convert_pytorch_checkpoint(source, target, resolve_model(model))
    out.print(f"Wrote {_literal(target)} ({_count(len(ckpt.model_state), 'tensor')}, "
              f"{_literal(ckpt.model.describe())})", soft_wrap=True)


def main() -> None:
    try:
        app(prog_name="cifar")
    except SystemExit as e:
        code = e.code
    except OSError as e:  # --help or --version, which run before any command, writing to a full disk
        if (lost := _output_lost(e)) is None:
            raise
        _stdout_lost(lost)
        code = 2
    try:
        sys.stdout.flush()  # here, not at exit: Python reports a failed final flush with a traceback
    except OSError as e:
        _stdout_lost(e)
        code = 2
    sys.exit(code)
