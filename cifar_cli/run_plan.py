"""A run decided before it starts: its settings (a fresh run's, or a resumed one's kept and checked), the
network and data it uses, and which images a checkpoint command judges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cifar_cli import schema
from cifar_cli.checkpoint import Checkpoint, load_checkpoint
from cifar_cli.data import Split, ensure_downloaded, eval_split, load_split
from cifar_cli.errors import CifarError, shell_command
from cifar_cli.models import PRESETS, ModelSpec, choose_network, preset_spec, source_changed
from cifar_cli.records import current_names
from cifar_cli.run_folder import JUDGE, RESUME, checkpoint_in
from cifar_cli.run_state import RunChoices, RunState, fingerprints, left_test_out, named, recorded_settings
from cifar_cli.runtime import Distributed, Runtime, once_per_machine
from cifar_cli.settings import DEFAULTS, TrainSettings
from cifar_cli.settings_file import SettingsFile, read_settings_file
from cifar_cli.trust import network_for, recorded_as_named


@dataclass(frozen=True)
class FreshStart:
    """What a new run starts from besides the options: a settings file (--config) and a checkpoint whose
    weights it starts from (--init-from)."""

    config: SettingsFile | None = None
    init_from: Checkpoint | None = None


@dataclass(frozen=True)
class RunPlan:
    """What a `cifar train` session runs: the run's settings, choices and network, and what the user should
    be told (options given over what a resumed run began with, checks an older checkpoint cannot support;
    for a run from a settings file, the options given over it)."""

    settings: TrainSettings
    choices: RunChoices
    network: ModelSpec
    notes: tuple[str, ...] = ()
    start: FreshStart = FreshStart()
    overridden: tuple[str, ...] = ()  # options given over a settings file's values, as '--epochs 3 (file: 2)'


def read_sources(resume: Path | None, config: Path | None, init_from: Path | None, model: str | None,
                 tell: Callable[[str], None]) -> tuple[Checkpoint | None, FreshStart]:
    """The files a run starts from: the checkpoint --resume continues (a run folder: its last.safetensors),
    or the settings file (--config) and checkpoint (--init-from: a run folder's best.safetensors) a new run
    takes its settings and weights from. Which file a run folder meant goes to `tell`."""
    if resume is not None and (config is not None or init_from is not None):
        raise CifarError(f"--resume continues a run with its own settings and weights; "
                         f"{'--config' if config is not None else '--init-from'} starts a new one: choose one")

    def checkpoint(path: Path | None, purpose: str) -> Checkpoint | None:
        if path is None:
            return None
        path, note = checkpoint_in(path, purpose)
        if note:
            tell(note)
        return load_checkpoint(path, model)

    return checkpoint(resume, RESUME), FreshStart(read_settings_file(config) if config is not None else None,
                                                  checkpoint(init_from, JUDGE))


def plan_run(checkpoint: Checkpoint | None, options: dict[str, Any], test: bool | None, augment_on: str | None,
             amp: bool | None, model: str | ModelSpec | None, device: torch.device, tell: Callable[[str], None],
             start: FreshStart = FreshStart()) -> RunPlan:
    """The one place that decides what a run is. A new run: the defaults, under a settings file's values
    (--config), under the options given (None: not given). A resumed run keeps everything it began with
    (its settings, test or not, where it augmented, AMP), refuses other settings (they would change what it
    has done so far) and takes a choice given over one of its choices, saying so. Its network (typed, or a
    network the Python API was handed: models.spec.handed_over; else the settings file's, else --init-from's,
    else the default) is built from the run's seed; before any data is read, a network that is the user's
    own and named only by a file is refused unless trusted (trust.py): a file is never a reason to import
    code. Lines the user should see first go to `tell`."""
    def place(choice: str) -> str:
        return "device" if Runtime(augment_on=choice).augments_on_device(device) else "loader"

    given = {k: v for k, v in {"test": test, "augment_on": augment_on, "amp": amp}.items() if v is not None}
    overridden: list[str] = []
    if checkpoint is None:
        config = start.config
        settings = (DEFAULTS.with_options(**config.settings) if config else DEFAULTS).with_options(**options)
        overridden = config.overridden({**options, **given}) if config else []
        given = {**(config.choices if config else {}), **given}
        network, notes = _fresh_network(model, start, settings.seed, tell), []
        began = RunChoices(augment_on=place("auto"))
    else:
        given = {k: place(v) if k == "augment_on" else v for k, v in given.items()}
        state = RunState.resume(checkpoint)
        settings = state.settings.with_options(**options)
        network = network_for(model, checkpoint.model, tell, named(checkpoint), seed=settings.seed)
        if changed := state.settings.differences(settings):
            raise CifarError("a resumed run keeps its settings; these differ from the checkpoint's: "
                             + ", ".join(changed))
        began, notes = _began_with(state, place("auto"))
        notes += [f"{_flag(k, v)} overrides what this run began with ({_flag(k, getattr(began, k))})"
                  for k, v in given.items() if v != getattr(began, k)]
    settings.validate()
    choices = replace(began, **{k: place(v) if k == "augment_on" else v for k, v in given.items()})
    if not choices.test and not settings.val_split:
        raise CifarError("--no-test needs --val-split: without the test set, held-out images must judge the epochs")
    if checkpoint is not None:
        notes += _unchecked(state.data, settings, choices)
    return RunPlan(settings, choices, network, tuple(notes), start, tuple(overridden))


def _fresh_network(model: str | ModelSpec | None, start: FreshStart, seed: int,
                   tell: Callable[[str], None]) -> ModelSpec:
    """A new run's network: --model as typed, else the one the settings file names, else the one --init-from
    holds (each of these under the trust rule), else the default; --init-from's checked to be the same."""
    config, init_from = start.config, start.init_from
    if model is None and config is not None and config.model is not None:
        network = network_for(None, _named_in(config), tell, config.path, seed)
    elif model is None and init_from is not None:
        network = network_for(None, init_from.model, tell, named(init_from), seed)
    else:
        network = model if isinstance(model, ModelSpec) else choose_network(model, seed=seed)
    if init_from is not None:
        _check_same_network(init_from, network, tell)
    return network


def _named_in(config: SettingsFile) -> ModelSpec:
    """The network a settings file names, as a record (nothing imported): a preset, a network record as
    settings.json writes it, or FILE.py:NAME (with the hash of that file as it is now, for the trust store)."""
    named_model = config.model
    try:
        if isinstance(named_model, dict):
            return ModelSpec.from_dict(named_model)
        if named_model in PRESETS:
            return preset_spec(named_model)
        if isinstance(named_model, str) and ":" in named_model:
            return recorded_as_named(named_model)
        raise ValueError(f"unknown network {named_model!r} (presets: {', '.join(PRESETS)}; or FILE.py:NAME)")
    except ValueError as e:
        raise CifarError(f"{config.path}: model: {e}") from None


def _check_same_network(init_from: Checkpoint, network: ModelSpec, tell: Callable[[str], None]) -> None:
    """--init-from's weights are for the network this run trains: the same preset with the same settings, or
    the user's network of the same class (whose weights are checked to fit when it is built)."""
    theirs, where = init_from.model, named(init_from)
    if theirs.is_preset != network.is_preset or (theirs.is_preset and theirs.name != network.name):
        raise CifarError(f"--init-from {where} holds {theirs.describe()}, not {network.describe()}; drop --model "
                         f"or pass {shell_command(['--model', theirs.name])}")
    if theirs.config != network.config:
        differ = [f"{k} {theirs.config.get(k)!r} (this run: {network.config.get(k)!r})"
                  for k in sorted({*theirs.config, *network.config}) if theirs.config.get(k) != network.config.get(k)]
        raise CifarError(f"--init-from {where} holds {theirs.name} with other settings: {', '.join(differ)}")
    if theirs.class_name and network.class_name and theirs.class_name != network.class_name:
        raise CifarError(f"--init-from {where} holds a {theirs.class_name}, not the {network.class_name} that "
                         f"{network.name} builds")
    if source_changed(theirs, network):
        tell(f"note: {network.name} has changed since {where} was written (its source file's hash differs); "
             "starting from its weights where they fit")


def read_run_data(plan: RunPlan, data_dir: Path, download: bool,
                  dist: Distributed | None = None) -> tuple[Split, Split | None]:
    """The images a run reads: the training set, and the test set unless the run leaves it out (its
    choices, a resumed run's as it began); the settings are checked against the training set's size.
    `download`: fetched first if missing, under torchrun by one process per machine while the others wait
    (all writing one archive would mangle it)."""
    if download:
        once_per_machine(dist or Distributed(), lambda: ensure_downloaded(data_dir))
    train_split = load_split(data_dir, train=True)
    test_split = load_split(data_dir, train=False) if plan.choices.test else None
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
            return (None if "held_out_acc" in current_names(checkpoint.metrics) else 0), None
        return settings.val_split, fingerprints((checkpoint.train_state or {}).get("data", {})).get("train")
    except (CifarError, schema.Invalid) as e:
        raise CifarError(f"{named(checkpoint)}: the training state is damaged ({e})") from None


def images_to_judge(checkpoint: Checkpoint, images: str, data_dir: Path, download: bool) -> Split:
    """The images `cifar eval --images` judges a checkpoint on: the test set, or the training images its run
    learned from or held out, as the checkpoint records them."""
    held_out, trained_on = images_of_run(checkpoint)
    return eval_split(data_dir, images, held_out, download, trained_on)
