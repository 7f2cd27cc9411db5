"""The `cifar` command: parses options, calls the core modules, prints what they return."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cifar_cli import __version__
from cifar_cli.errors import CifarError

if TYPE_CHECKING:  # the commands import the heavy modules (torch) only when they run
    import torch

    from cifar_cli.checkpoint import Checkpoint
    from cifar_cli.models import CifarNet

app = typer.Typer(
    name="cifar",
    help="Train, inspect and evaluate small convolutional networks on CIFAR-10.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# Options shared by several commands, declared once.
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="Folder that contains cifar-10-batches-py (default: $CIFAR_DATA_DIR or ~/.cache/cifar-cli).",
    file_okay=False, show_default=False)]
Download = Annotated[bool, typer.Option("--download/--no-download", help="Fetch CIFAR-10 (md5-checked) if missing.")]


class DeviceName(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"
    mps = "mps"


Device = Annotated[DeviceName, typer.Option("--device", help="Where to run: auto picks CUDA, then MPS, then CPU.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=0, show_default=False,
    help="Data loader worker processes [default: 0 on the CPU, which the training uses; up to 8 per GPU].")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed (results are reproducible on CPU).")]
TTA = Annotated[bool | None, typer.Option(
    "--tta/--no-tta", show_default=False,
    help="Flip test-time augmentation: average the logits of each image and its mirror image "
    "[default: on].")]


def _fails_cleanly(command: Callable) -> Callable:
    """A CifarError (bad input) becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CifarError as e:
            err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _data_dir(data_dir: Path | None) -> Path:
    from cifar_cli.data import default_data_dir

    return data_dir if data_dir is not None else default_data_dir()


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


@app.command()
@_fails_cleanly
def summary(as_json: Json = False) -> None:
    """Layers, output shapes and parameter counts of the network, and a check of the design rules."""
    from cifar_cli.models import NetConfig, build_model
    from cifar_cli.report import layer_summary, rules_table
    from cifar_cli.rules import check_rules, count_parameters

    model = build_model()
    rules = check_rules(model)
    table, layers = layer_summary(model)
    passed = all(r.passed for r in rules)
    if as_json:
        _print_json({"config": NetConfig().to_dict(), "parameters": count_parameters(model), "layers": layers,
                     "rules": [asdict(r) for r in rules], "passed": passed})
    else:
        out.print(table, soft_wrap=True)
        out.print(rules_table(rules))
        out.print("[green]All rules pass.[/]" if passed else "[bold red]Some rules fail.[/]")
    if not passed:
        raise typer.Exit(1)


@app.command("receptive-field")
@_fails_cleanly
def receptive_field_command(as_json: Json = False) -> None:
    """Receptive field layer by layer, computed by walking the network's real modules."""
    from cifar_cli.models import build_model
    from cifar_cli.receptive_field import receptive_field
    from cifar_cli.report import receptive_field_table

    rows = receptive_field(build_model())
    total = rows[-1].rf if rows else 1
    if as_json:
        _print_json({"layers": [asdict(r) for r in rows], "total": total})
    else:
        out.print(receptive_field_table(rows))
        out.print(f"Total receptive field: [bold]{total}[/] pixels (of a 32x32 image)")


@app.command("augment-preview")
@_fails_cleanly
def augment_preview(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.", dir_okay=False)] = Path(
        "augment-preview.png"),
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=64, help="Training images, one row each.")] = 8,
    views: Annotated[int, typer.Option("--views", "-k", min=1, max=32, help="Augmented views of each.")] = 6,
    image: Annotated[list[Path] | None, typer.Option(
        "--image", help="Use this picture instead of the dataset (repeatable).", dir_okay=False)] = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
    download: Download = False,
    as_json: Json = False,
) -> None:
    """A PNG grid of real images and what the training pipeline makes of them."""
    import numpy as np

    from cifar_cli.augment import describe, preview, train_pipeline
    from cifar_cli.data import CLASSES, load_image, load_split
    from cifar_cli.report import write_image_grid

    if image:
        images = np.stack([load_image(p) for p in image])
        labels = [p.name for p in image]
    else:
        split = load_split(_data_dir(data_dir), train=True, download_missing=download)
        pick = np.random.default_rng(seed).choice(len(split), size=min(count, len(split)), replace=False)
        images, labels = split.images[pick], [CLASSES[i] for i in split.labels[pick]]
    write_image_grid(preview(images, labels, views, seed), out_file)
    pipeline = describe(train_pipeline())
    if as_json:
        _print_json({"out": str(out_file), "images": labels, "views": views, "seed": seed, "pipeline": pipeline})
    else:
        out.print("[bold]Training pipeline[/]")
        for line in pipeline:
            out.print(f"  {line}", soft_wrap=True)
        out.print(f"Wrote {len(labels)} images x {views} views to [bold]{out_file}[/]")


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


@app.command()
@_fails_cleanly
def train(
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs to train [default: 40].",
                                                  show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per step [default: 128].",
                                                      show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate of the one-cycle schedule "
                                                "[default: 0.1].", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed [default: 0]; same seed, same "
                                                "result on CPU.", show_default=False)] = None,
    val_split: Annotated[int | None, typer.Option(
        "--val-split", show_default=False,
        help="Hold out this many training images (the same ones for every seed) and pick the best epoch by "
        "them: tune on these, keep the test set for the final figure [default: 0].")] = None,
    ema: Annotated[float | None, typer.Option(
        "--ema", show_default=False,
        help="Evaluate and save an exponential moving average of the weights with this per-step decay, "
        "e.g. 0.999 [default: 0, off].")] = None,
    tta: TTA = None,
    device: Device = DeviceName.auto,
    data_dir: DataDir = None,
    download: Download = False,
    workers: Workers = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", show_default=False,
        help="bf16 autocast on CUDA [default: on where the GPU supports bf16].")] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the network (CUDA: faster after "
                                                "a minute of compiling).")] = False,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for checkpoints and history.json [default: runs/<date-time>, or the resumed "
        "checkpoint's folder].", file_okay=False, show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run saved in this last.safetensors.", dir_okay=False)] = None,
    as_json: Json = False,
) -> None:
    """Train the network with live progress; saves last/best .safetensors checkpoints and history.json.

    Ctrl-C (or SIGTERM) finishes the current step, saves last.safetensors and prints how to resume.
    Under torchrun (torchrun --nproc_per_node=N -m cifar_cli train ...) it trains with DDP.
    """
    from cifar_cli.checkpoint import load_checkpoint
    from cifar_cli.data import load_split
    from cifar_cli.engine import (
        Runtime,
        TrainingInterrupted,
        TrainSettings,
        init_distributed,
        resolve_device,
        settings_of,
        shutdown_distributed,
    )
    from cifar_cli.engine import train as run_training

    checkpoint = load_checkpoint(resume) if resume else None
    base = settings_of(checkpoint) if checkpoint else TrainSettings()
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "val_split": val_split, "ema": ema,
             "tta": tta}
    settings = replace(base, **{k: v for k, v in given.items() if v is not None})
    settings.validate()
    torch_device = resolve_device(device.value)
    dist = init_distributed(torch_device)
    if out_dir is None:
        out_dir = resume.parent if resume else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    root = _data_dir(data_dir)
    train_split = load_split(root, train=True, download_missing=download)
    test_split = load_split(root, train=False, download_missing=download)
    settings.validate(len(train_split))

    console = err if as_json else out
    if dist.main:
        processes = f" x {dist.world} processes" if dist.world > 1 else ""
        held = f" / {settings.val_split:,} held-out" if settings.val_split else ""
        console.print(f"Training on [bold]{torch_device}{processes}[/]: {len(train_split) - settings.val_split:,} "
                      f"train{held} / {len(test_split):,} test images, {settings.epochs} epochs, "
                      f"batch {settings.batch_size}, lr {settings.lr}, seed {settings.seed}"
                      + (f", EMA {settings.ema}" if settings.ema else "") + (", flip TTA" if settings.tta else "")
                      + f" -> {out_dir}"
                      + (f" (resuming {resume})" if resume else ""), soft_wrap=True)
    runtime = Runtime(workers=workers, amp=amp, compile=compile_model)
    try:
        with _RichTrainObserver(console, enabled=dist.main) as observer:
            result = run_training(settings, train_split, test_split, out_dir, torch_device, runtime=runtime,
                                  resume=checkpoint, observer=observer, dist=dist)
    except TrainingInterrupted as stop:
        if dist.main:
            err.print(f"Stopped by {signal.Signals(stop.signum).name} at epoch {stop.epoch}, step {stop.step}; "
                      f"saved {stop.checkpoint}. Resume with: cifar train --resume {stop.checkpoint}", soft_wrap=True)
        raise typer.Exit(128 + stop.signum) from None
    except KeyboardInterrupt:
        err.print("Interrupted; last.safetensors holds the last completed epoch.")
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        shutdown_distributed()
    if not dist.main:
        return
    if as_json:
        _print_json(result.to_dict())
    else:
        final = result.history[-1]
        best = result.history[result.best_epoch - 1]
        held = f", held-out {100 * final.val_acc:.2f}%" if final.val_acc is not None else ""
        judge = result.best_by.removesuffix("_acc")
        out.print(f"Done: final test accuracy [bold]{100 * final.test_acc:.2f}%[/]{held}; best epoch by {judge} "
                  f"accuracy: {result.best_epoch} (test {100 * best.test_acc:.2f}%). "
                  f"Checkpoints and history.json in [bold]{out_dir}[/]", soft_wrap=True)


CheckpointPath = Annotated[Path | None, typer.Option(
    "--checkpoint", "-c", dir_okay=False, show_default=False,
    help="A .safetensors checkpoint written by cifar train [default: the one shipped with cifar-cli].")]


def _load_model(path: Path | None, device: DeviceName,
                tta: bool | None) -> tuple[Path, Checkpoint, CifarNet, torch.device, bool]:
    """What eval and predict share: the checkpoint (the packaged one by default), its network on the
    device, and the TTA choice (the training default unless given)."""
    from cifar_cli.checkpoint import PACKAGED_CHECKPOINT, load_checkpoint, model_from_checkpoint
    from cifar_cli.engine import TrainSettings, resolve_device

    if path is None:
        if not PACKAGED_CHECKPOINT.is_file():
            raise CifarError(f"no checkpoint given and the packaged one is missing ({PACKAGED_CHECKPOINT}); "
                             "pass a .safetensors file written by cifar train")
        path = PACKAGED_CHECKPOINT
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    torch_device = resolve_device(device.value)
    return path, ckpt, model.to(torch_device), torch_device, TrainSettings().tta if tta is None else tta


@app.command("eval")
@_fails_cleanly
def eval_command(
    checkpoint: Annotated[Path | None, typer.Argument(
        help="A .safetensors checkpoint written by cifar train [default: the one shipped with cifar-cli].",
        dir_okay=False, show_default=False)] = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = DeviceName.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1000,
    tta: TTA = None,
    as_json: Json = False,
) -> None:
    """Test loss, accuracy, per-class results and the confusion matrix of a checkpoint."""
    from cifar_cli.data import load_split
    from cifar_cli.engine import evaluate
    from cifar_cli.report import confusion_table, per_class_table

    checkpoint, ckpt, model, torch_device, tta = _load_model(checkpoint, device, tta)
    split = load_split(_data_dir(data_dir), train=False, download_missing=download)
    result = evaluate(model, split, torch_device, batch_size=batch_size, classes=ckpt.classes,
                      mean=ckpt.mean, std=ckpt.std, tta=tta)
    if as_json:
        _print_json({"checkpoint": str(checkpoint), "epoch": ckpt.epoch, "images": len(split), "tta": tta,
                     **result.to_dict()})
        return
    out.print(Panel.fit(f"{checkpoint}  (epoch {ckpt.epoch}, cifar-cli {ckpt.version})\n"
                        f"test images {len(split):,}{' + mirror images' if tta else ''}   "
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
    as_json: Json = False,
) -> None:
    """The most likely classes of each image, with their probabilities."""
    import numpy as np

    from cifar_cli.data import load_image
    from cifar_cli.engine import predict as class_probabilities

    path, ckpt, model, torch_device, tta = _load_model(checkpoint, device, tta)
    pixels = np.stack([load_image(p) for p in images])
    probs = class_probabilities(model, pixels, torch_device, ckpt.mean, ckpt.std, tta=tta)
    best = probs.topk(min(top, probs.shape[1]), dim=1)
    results = [{"image": str(p), "top": [{"class": ckpt.classes[i], "probability": float(v)}
                                          for v, i in zip(values.tolist(), indices.tolist())]}
               for p, values, indices in zip(images, best.values, best.indices)]
    if as_json:
        _print_json({"checkpoint": str(path), "predictions": results})
        return
    for r in results:
        guesses = "   ".join(f"{t['class']} [bold]{100 * t['probability']:.1f}%[/]" for t in r["top"])
        out.print(f"{r['image']}: {guesses}", soft_wrap=True)


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
    from cifar_cli.engine import read_history
    from cifar_cli.report import write_training_curves

    history = read_history(run)
    if out_file is None:
        out_file = (run if run.is_dir() else run.parent) / "curves.png"
    write_training_curves(history, out_file, title)
    last, best = history[-1], max(history, key=lambda r: r.test_acc)
    if as_json:
        _print_json({"out": str(out_file), "epochs": len(history), "final_test_acc": last.test_acc,
                     "best_test_acc": best.test_acc, "best_epoch": best.epoch})
        return
    out.print(f"Wrote {out_file}: {len(history)} epochs, final test accuracy {100 * last.test_acc:.2f}%, "
              f"best {100 * best.test_acc:.2f}% (epoch {best.epoch})")


@app.command()
@_fails_cleanly
def convert(
    source: Annotated[Path, typer.Argument(help="A PyTorch .pt/.pth file holding this network's state_dict.",
                                           dir_okay=False, show_default=False)],
    target: Annotated[Path, typer.Argument(help="The .safetensors checkpoint to write.", dir_okay=False,
                                           show_default=False)],
) -> None:
    """Convert a PyTorch .pt/.pth state_dict of the default network to a .safetensors checkpoint, safely.

    The file is read with torch.load(weights_only=True), which refuses pickles that would run code.
    """
    from cifar_cli.checkpoint import convert_pytorch_checkpoint

    ckpt = convert_pytorch_checkpoint(source, target)
    out.print(f"Wrote {target} ({len(ckpt.model_state)} tensors, {ckpt.config.arch})")


def main() -> None:
    app(prog_name="cifar")
