"""A checkpoint made ready to run, by the one sequence every command, the API and the app follow: which file
a run folder means, the file read, the network chosen (a preset from the file alone; a user's network only as
typed, or trusted: trust.py), and its weights loaded into it. Nothing here imports code a file names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from cifar_cli.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from cifar_cli.models import ModelSpec, source_changed
from cifar_cli.run_folder import JUDGE, checkpoint_in
from cifar_cli.trust import network_for


@dataclass(frozen=True)
class Opened:
    """A checkpoint file, what it holds, the network it describes with its weights (on the CPU), and whether
    the user network's source file has changed since the checkpoint was written (it still ran)."""

    path: Path
    ckpt: Checkpoint
    spec: ModelSpec
    network: nn.Module
    source_changed: bool


def open_checkpoint(path: Path, typed: str | None, tell: Callable[[str], None], purpose: str = JUDGE,
                    choose: Callable[[Checkpoint, Path], ModelSpec] | None = None) -> Opened:
    """The checkpoint at `path` (a run folder: its natural file for `purpose`, see run_folder.checkpoint_in)
    with its network built: `typed` is the --model given, if any; `choose` picks the network another way (the
    API's module handed over). What the user should know (which file a folder meant, a trusted network used)
    goes to `tell`, one line each."""
    path, note = checkpoint_in(Path(path).expanduser(), purpose)
    if note:
        tell(note)
    ckpt = load_checkpoint(path, typed)
    spec = choose(ckpt, path) if choose is not None else network_for(typed, ckpt.model, tell, path)
    network = model_from_checkpoint(ckpt, path, given=spec)
    return Opened(path, ckpt, spec, network, source_changed(ckpt.model, spec))
