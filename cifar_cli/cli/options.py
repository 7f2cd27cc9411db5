"""What the commands share: the options several take (declared once), the wrapper that turns bad input
into one clean line, JSON printing, and the options and loading of the commands that run a checkpoint.

Everything that came from the user or from a file is printed through terminal.literal, never as markup.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from cifar_cli.cli.completion import complete_model
from cifar_cli.errors import CifarError
from cifar_cli.interrupts import NotedInterrupts, signal_arrived
from cifar_cli.settings import AUGMENT_PLACES, DEFAULT_MODEL, DEFAULTS, DEVICES
from cifar_cli.terminal import console, counted, literal, progress_bar  # noqa: F401 - counted for the commands

if TYPE_CHECKING:  # the commands import the heavy modules (torch) only when they run
    import torch
    from torch import nn

    from cifar_cli.checkpoint import Checkpoint
    from cifar_cli.models import ModelSpec

out = console()
err = console(stderr=True)


def helped(text: str, default: object | None = None) -> str:
    """An option's help as `--help` shows it. Typer reads help as Rich markup, which would swallow a `[...]`
    in it, so the text is escaped; and Typer writes a default given as text in parentheses, so a default
    that is not a plain value (None standing for "not given", or a sentence) is written here, as Typer
    writes the plain ones: `[default: 40]`. Every help with such a default goes through here."""
    shown = escape(text)
    return shown if default is None else f"{shown} [dim]\\[default: {escape(str(default))}][/]"


# Options shared by several commands, declared once.
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help=helped("Folder that contains cifar-10-batches-py.", "$CIFAR_DATA_DIR or ~/.cache/cifar-cli"),
    file_okay=False, show_default=False)]
Download = Annotated[bool, typer.Option("--download/--no-download", help="Fetch CIFAR-10 (md5-checked) if missing.")]
DeviceName = Enum("DeviceName", {name: name for name in DEVICES}, type=str)
AugmentPlace = Enum("AugmentPlace", {name: name for name in AUGMENT_PLACES}, type=str)
Device = Annotated[DeviceName, typer.Option("--device", help="Where to run: auto picks CUDA, then MPS, then CPU.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=0, show_default=False,
    help=helped("Data loader worker processes; changes speed, not results.",
                "0 on the CPU, which the training uses; up to 8 per GPU"))]
ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=False, autocompletion=complete_model,
    help=helped("The network: a preset (cifar models lists them) or your own, as FILE.py:NAME or "
                "package.module:NAME (a class or function returning an nn.Module).", DEFAULT_MODEL))]
PngOut = Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.", dir_okay=False)]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed (results are reproducible on CPU).")]
TTA = Annotated[bool | None, typer.Option(
    "--tta/--no-tta", show_default=False,
    help=helped("Flip test-time augmentation: average the logits of each image and its mirror image.",
                "tta" if DEFAULTS.tta else "no-tta"))]
CHECKPOINT_HELP = "A .safetensors checkpoint written by cifar train, or its run folder (its best.safetensors)."
CheckpointPath = Annotated[Path | None, typer.Option(
    "--checkpoint", "-c", show_default=False, help=helped(CHECKPOINT_HELP, "the one shipped with cifar-cli"))]
CheckpointArg = Annotated[Path | None, typer.Argument(
    help=helped(CHECKPOINT_HELP, "the one shipped with cifar-cli"), show_default=False)]


def setting_option(name: str, flag: str, help: str, kind: type = int, panel: str | None = None) -> Any:
    """A train option whose default lives in settings.DEFAULTS; None means "not given" (keep a resumed run's)."""
    return Annotated[kind | None, typer.Option(flag, help=helped(help, getattr(DEFAULTS, name)), show_default=False,
                                               rich_help_panel=panel)]


def in_panel(option: Any, panel: str) -> Any:
    """A shared option, listed by one command's --help under `panel`."""
    import copy
    from typing import get_args

    kind, info = get_args(option)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[kind, info]


# How often the augmentation applies each random transform: train's settings, which augment-preview shows.
AffineP = setting_option("affine_p", "--affine-p", "Probability of the pipeline's ShiftScaleRotate for each image "
                         "(the assignment's reference network trained with 0.3).", float)
CutoutP = setting_option("cutout_p", "--cutout-p", "Probability of its CoarseDropout (one 16x16 hole filled with "
                         "the mean).", float)
ToneP = setting_option("tone_p", "--tone-p", "Probability of its RandomBrightnessContrast (the reference "
                       "network: 0.2).", float)


def long_step(description: str, total: int | None = None, as_json: bool = False) -> Any:
    """Progress on stderr for a step that takes seconds (a bar, or a spinner without a total); nothing under
    --json or where stderr is not a terminal. Yields the hook the step calls with how much is done."""
    return progress_bar(err, literal(description), total, enabled=not as_json)


def read_split(data_dir: Path | None, train: bool, download: bool, as_json: bool = False) -> Any:
    """The training or test split, with a spinner while it is read."""
    from cifar_cli.data import load_split

    with long_step(f"reading the CIFAR-10 {'training' if train else 'test'} images", as_json=as_json):
        return load_split(data_dir_or_default(data_dir), train=train, download_missing=download)


def data_dir_or_default(data_dir: Path | None) -> Path:
    from cifar_cli.data import default_data_dir

    return data_dir.expanduser() if data_dir is not None else default_data_dir()


def expand(path: Path | None) -> Path | None:
    """'~/runs' as the shell would have it, for paths that reach us quoted."""
    return path.expanduser() if path is not None else None


# --- the commands that run a checkpoint: eval, predict, mistakes, gradcam ------------------------------------

@dataclass(frozen=True)
class Loaded:
    """A checkpoint ready to run: where it came from, what it holds, its network on the device, TTA, and which
    network that is."""

    path: Path
    ckpt: Checkpoint
    network: nn.Module
    device: torch.device
    tta: bool
    spec: ModelSpec  # the network built: the checkpoint's preset, or the user's file as typed or trusted


@dataclass(frozen=True)
class CheckpointOptions:
    """The options every command that runs a checkpoint takes, and the loading they share."""

    model: str | None
    device: DeviceName
    tta: bool | None = None
    data_dir: Path | None = None
    download: bool = False

    @property
    def data_root(self) -> Path:
        return data_dir_or_default(self.data_dir)

    def load(self, path: Path | None, purpose: str = "judge") -> Loaded:
        """The checkpoint (the packaged one by default; a run folder's natural file for `purpose`, see
        run_folder.checkpoint_in), its network on the device (a user network needs the user's --model), and
        the TTA choice (the training default unless given)."""
        from cifar_cli.checkpoint import PACKAGED_CHECKPOINT
        from cifar_cli.opening import open_checkpoint
        from cifar_cli.runtime import resolve_device

        if path is None:
            if not PACKAGED_CHECKPOINT.is_file():
                raise CifarError(f"no checkpoint given and the packaged one is missing ({PACKAGED_CHECKPOINT}); "
                                 "pass a .safetensors file written by cifar train")
            path = PACKAGED_CHECKPOINT
        opened = open_checkpoint(path, self.model, say, purpose)
        warn_if_changed(opened.spec, opened.ckpt, opened.source_changed)
        torch_device = resolve_device(DeviceName(self.device).value)
        tta = DEFAULTS.tta if self.tta is None else self.tta
        return Loaded(opened.path, opened.ckpt, opened.network.to(torch_device), torch_device, tta, opened.spec)


def say(line: str | None) -> None:
    """A line about what the command is doing (which file a run folder meant, ...), on stderr: under --json,
    stdout holds the JSON alone."""
    if line and os.environ.get("RANK", "0") == "0":  # under torchrun, the first process speaks for all
        err.print(literal(line), soft_wrap=True)


def warn_if_changed(spec: Any, ckpt: Checkpoint, changed: bool) -> None:
    """The user's network file has changed since the checkpoint was written: the weights may still fit,
    so the command goes on, saying so."""
    if changed:
        err.print(f"warning: {literal(spec.name)} has changed since {literal(ckpt.source)} was written "
                  "(its source file's hash differs); going on with the file as it is now", soft_wrap=True)


def _tail(data: bool, tta: bool, device: bool) -> list[inspect.Parameter]:
    """The options of CheckpointOptions, as the parameters Typer reads."""
    def option(name: str, kind: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)

    return [*([option("tta", TTA, None)] if tta else []), option("model", ModelOption, None),
            *([option("data_dir", DataDir, None), option("download", Download, False)] if data else []),
            *([option("device", Device, DeviceName.auto)] if device else [])]


def runs_checkpoint(data: bool = True, tta: bool = True, device: bool = True) -> Callable[[Callable], Callable]:
    """Give a command the checkpoint options (--tta, --model, --data-dir, --download, --device; the data and
    TTA ones where it reads the dataset or predicts with TTA, --device where the user may choose: a command
    without it runs on the CPU) before its --json, handed to it as `options`."""
    def decorate(command: Callable) -> Callable:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        at = next((i for i, p in enumerate(own) if p.name == "as_json"), len(own))
        names = [p.name for p in _tail(data, tta, device)]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            fixed = {} if device else {"device": DeviceName.cpu}
            options = CheckpointOptions(**fixed, **{name: kwargs.pop(name) for name in names})
            return command(*args, options=options, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != "options"]
        wrapper.__signature__ = inspect.Signature(params[:at] + _tail(data, tta, device) + params[at:])  # type: ignore
        return wrapper

    return decorate


# --- failing cleanly -----------------------------------------------------------------------------------------

def fails_cleanly(command: Callable) -> Callable:
    """A CifarError (bad input) becomes one line on stderr and exit code 2, never a traceback. So does code
    the command ran (a user's network) ending the program: SystemExit, or a KeyboardInterrupt that no real
    Ctrl-C caused. Under --json, stdout holds the JSON alone: whatever else prints goes to stderr.

    The device running out of memory becomes one line too (training saves first: training.loop).
    Under torchrun every process meets the same error; only the first one says it.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with NotedInterrupts(), _stdout_for_json_only(kwargs.get("as_json", False)), _warnings_in_one_line():
                return command(*args, **kwargs)
        except CifarError as e:
            error(str(e))
        except (OSError, SystemExit) as e:
            if (lost := output_lost(e)) is None:
                if isinstance(e, OSError):
                    raise
                error(_ended_by_code(e, kwargs.get("model")))
            else:
                stdout_lost(lost)
        except (KeyboardInterrupt, GeneratorExit) as e:
            if isinstance(e, KeyboardInterrupt) and signal_arrived():
                raise
            error(_ended_by_code(e, kwargs.get("model")))
        except RuntimeError as e:
            if not _out_of_memory(e):
                raise
            from cifar_cli.runtime import out_of_memory

            error(str(out_of_memory("the device")))
        raise typer.Exit(2) from None

    return wrapper


def _out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # loaded by whatever ran out of memory
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


def _ended_by_code(e: BaseException, model: str | None) -> str:
    """Code the command ran, not a real signal, tried to end the program (user code called outside
    models.spec.user_code, which words it more exactly)."""
    what = f"called sys.exit({'' if e.code is None else repr(e.code)})" if isinstance(e, SystemExit) \
        else f"raised {type(e).__name__}"
    who = f"--model {model}: its code" if model and ":" in model else "code this command ran"
    return f"{who} {what}, which ends the program; a network must raise an exception instead"


def note(message: str) -> None:
    """A remark on stderr that changes nothing (a picture squashed to size)."""
    if os.environ.get("RANK", "0") == "0":
        err.print(f"note: {literal(message)}", soft_wrap=True)


def error(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        err.print(f"[bold red]error:[/] {literal(message)}", soft_wrap=True)


def output_lost(e: BaseException) -> OSError | None:
    """The error that kept our output from stdout (a full disk, a closed pipe), if that is what `e` is."""
    if isinstance(e, SystemExit) and isinstance(e.__context__, BrokenPipeError):
        return e.__context__  # Rich gives up on a closed pipe this way
    lost = (errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EFBIG, errno.EIO)
    return e if isinstance(e, OSError) and e.errno in lost and e.filename is None else None


def stdout_lost(e: OSError) -> None:
    """Say so on stderr once, and send what stdout still holds nowhere, so that Python's flush at exit
    does not fail again with a traceback."""
    error(f"cannot write to standard output: {e.strerror or e}")
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
            err.print(f"warning: {literal(text[0] if text else category.__name__)}", soft_wrap=True)

    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous


# --- JSON ----------------------------------------------------------------------------------------------------

_json_stdout: list[Any] = []  # while a --json command runs: the real stdout, which only its JSON reaches


@contextlib.contextmanager
def _stdout_for_json_only(as_json: bool) -> Iterator[None]:
    """Under --json, anything printed by code other than `print_json` (a user's network calling print,
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


def print_json(data: Any) -> None:
    stdout = _json_stdout[-1] if _json_stdout else sys.stdout
    stdout.write(json.dumps(_strict(data), indent=2, allow_nan=False) + "\n")
