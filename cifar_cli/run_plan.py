"""A run decided before it starts: its settings (a fresh run's, or a resumed one's kept and checked), the
network and data it uses, and which images a checkpoint command judges."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cifar_cli import schema
from cifar_cli.checkpoint import Checkpoint
from cifar_cli.data import Split, eval_split, load_split
from cifar_cli.errors import CifarError
from cifar_cli.models import ModelSpec, choose_network
from cifar_cli.run_state import RunChoices, RunState, fingerprints, left_test_out, named, recorded_settings
from cifar_cli.runtime import Runtime
from cifar_cli.settings import DEFAULTS, TrainSettings


@dataclass(frozen=True)
class RunPlan:
    """What a `cifar train` session runs: the run's settings, choices and network, and what the user should
    be told (options given over what a resumed run began with, checks an older checkpoint cannot support)."""

    settings: TrainSettings
    choices: RunChoices
    network: ModelSpec
    notes: tuple[str, ...] = ()


def plan_run(checkpoint: Checkpoint | None, options: dict[str, Any], test: bool | None, augment_on: str | None,
             amp: bool | None, model: str | ModelSpec | None, device: torch.device) -> RunPlan:
    """The one place that decides what a run is. A new run: the defaults with the options given (None: not
    given). A resumed run keeps everything it began with (its settings, test or not, where it augmented,
    AMP), refuses other settings (they would change what it has done so far) and takes a choice given over
    one of its choices, saying so. Its network (models.choose_network, from --model as typed, or a network
    the Python API was handed: models.spec.handed_over) is built from the run's seed; before any data is
    read, a checkpoint whose network is the user's own is refused unless --model names it (a checkpoint is
    never a reason to import code)."""
    def place(choice: str) -> str:
        return "device" if Runtime(augment_on=choice).augments_on_device(device) else "loader"

    given = {"test": test, "augment_on": place(augment_on) if augment_on else None, "amp": amp}
    if checkpoint is None:
        settings, notes = DEFAULTS.with_options(**options), []
        network = model if isinstance(model, ModelSpec) else choose_network(model, seed=settings.seed)
        began = RunChoices(augment_on=place("auto"))
    else:
        state = RunState.resume(checkpoint)
        settings = state.settings.with_options(**options)
        network = choose_network(model, checkpoint.model, named(checkpoint), seed=settings.seed)
        if changed := state.settings.differences(settings):
            raise CifarError("a resumed run keeps its settings; these differ from the checkpoint's: "
                             + ", ".join(changed))
        began, notes = _began_with(state, place("auto"))
        notes += [f"{_flag(k, v)} overrides what this run began with ({_flag(k, getattr(began, k))})"
                  for k, v in given.items() if v is not None and v != getattr(began, k)]
    settings.validate()
    choices = replace(began, **{k: v for k, v in given.items() if v is not None})
    if not choices.test and not settings.val_split:
        raise CifarError("--no-test needs --val-split: without the test set, held-out images must judge the epochs")
    if checkpoint is not None:
        notes += _unchecked(state.data, settings, choices)
    return RunPlan(settings, choices, network, tuple(notes))


def read_run_data(plan: RunPlan, data_dir: Path, download: bool) -> tuple[Split, Split | None]:
    """The images a run reads: the training set, and the test set unless the run leaves it out (its
    choices, a resumed run's as it began); the settings are checked against the training set's size."""
    train_split = load_split(data_dir, train=True, download_missing=download)
    test_split = load_split(data_dir, train=False, download_missing=download) if plan.choices.test else None
    plan.settings.validate(len(train_split))
    return train_split, test_split


def _flag(key: str, value: Any) -> str:
    if key == "augment_on":
        return f"--augment-on {value}"
    if value is None:
        return "AMP as the GPU allows"
    return f"--{'' if value else 'no-'}{key}"


def _began_with(state: RunState, here: str) -> tuple[RunChoices, list[str]]:
    """The choices a resumed run began with; a checkpoint from before they were recorded shows only whether
    it left the test set out, so the rest are this machine's defaults, said aloud."""
    if state.choices is not None:
        return state.choices, []
    return RunChoices(not left_test_out(state.history), here, None), [
        f"this checkpoint is from before runs recorded where they augmented images and whether they used AMP; "
        f"going on with --augment-on {here}: pass --augment-on and --amp/--no-amp if it began otherwise"]


def _unchecked(recorded: dict[str, Any], settings: TrainSettings, choices: RunChoices) -> list[str]:
    """The sets of images this session uses that the checkpoint has no fingerprint of (written before they
    were taken): said, since they cannot be checked to be the run's."""
    used = ["train", *(["held_out"] if settings.val_split else []), *(["test"] if choices.test else [])]
    kinds = {"train": "training", "held_out": "held-out", "test": "test"}
    missing = [kinds[name] for name in used if name not in recorded]
    if not missing:
        return []
    return [f"not checked: this checkpoint is from before runs fingerprinted their {' and '.join(missing)} images, "
            "so a --data-dir with other ones would go unnoticed"]


def images_of_run(checkpoint: Checkpoint) -> tuple[int | None, dict[str, Any] | None]:
    """What a checkpoint says of the training images its run used: how many it held out (a weights-only
    file, such as best.safetensors, only shows by a held-out figure that it held some out: None), and its
    fingerprint of the whole training set, if it has one (data.eval_split checks it)."""
    try:
        settings = recorded_settings(checkpoint)
        if settings is None:
            return (None if "val_acc" in checkpoint.metrics else 0), None
        return settings.val_split, fingerprints((checkpoint.train_state or {}).get("data", {})).get("train")
    except (CifarError, schema.Invalid) as e:
        raise CifarError(f"{named(checkpoint)}: the training state is damaged ({e})") from None


def images_to_judge(checkpoint: Checkpoint, images: str, data_dir: Path, download: bool) -> Split:
    """The images `cifar eval --images` judges a checkpoint on: the test set, or the training images its run
    learned from or held out, as the checkpoint records them."""
    held_out, trained_on = images_of_run(checkpoint)
    return eval_split(data_dir, images, held_out, download, trained_on)
