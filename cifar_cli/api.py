"""The Python API, for notebooks and scripts: `build` a network, `train` it, `evaluate` it, `load` a checkpoint
into a plain module, `predict` pictures. docs/api.md documents each function.

Each calls the core functions its `cifar` command calls (train, eval, predict): the same settings and
checks, the same training loop, run folder and checkpoints, the same evaluation. Bad input raises
CifarError with the command's one-line message. As on the command line, no code is imported because a
checkpoint names it: a checkpoint of your own network is loaded into the network you pass as `model`.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from cifar_cli.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from cifar_cli.data import CLASSES, MEAN, STD, default_data_dir, eval_split
from cifar_cli.errors import CifarError
from cifar_cli.models import PRESETS, ModelSpec, choose_network, create_model, spec_to_build
from cifar_cli.models.registry import config_dict
from cifar_cli.models.spec import handed_over
from cifar_cli.opening import Opened, open_checkpoint
from cifar_cli.pictures import load_image, picture_pixels
from cifar_cli.records import EpochRecord, headline
from cifar_cli.run_folder import BEST, JUDGE, LAST, RUN_RECORD
from cifar_cli.run_plan import images_to_judge, plan_run, read_run_data
from cifar_cli.runtime import Runtime, resolve_device
from cifar_cli.settings import DEFAULT_MODEL, DEFAULTS, EVAL_BATCH_SIZE, TrainSettings
from cifar_cli.terminal import console
from cifar_cli.train_progress import RichTrainObserver
from cifar_cli.training.evaluation import evaluate as evaluate_split
from cifar_cli.training.evaluation import predict as class_probabilities
from cifar_cli.training.session import Observers, TrainingInterrupted
from cifar_cli.trust import remember

__all__ = ["CifarError", "Evaluation", "Prediction", "TrainedRun", "build", "evaluate", "load", "predict", "train"]

Network = nn.Module | str | Callable[[], nn.Module]  # a module, a preset or FILE.py:NAME, a class or function
JUDGED = ("test", "train", "held-out")  # what evaluate(images=...) takes, as `cifar eval --images`

# The presets `build` made, so that `train` records them as presets: a checkpoint then rebuilds them alone.
_BUILT_AS: WeakKeyDictionary[nn.Module, ModelSpec] = WeakKeyDictionary()


@dataclass
class TrainedRun:
    """What `train` returns: the trained network (the weights of last.safetensors, in eval mode), the epochs
    as `cifar train` printed them, and the run folder's checkpoints (None when no `out` was given)."""

    model: nn.Module
    history: list[EpochRecord]
    settings: TrainSettings
    accuracy: float  # the last epoch's test accuracy, or held-out accuracy where the test set was left out
    accuracy_on: str  # which: "test" or "held-out"
    best_epoch: int
    out_dir: Path | None
    last: Path | None
    best: Path | None


@dataclass
class Evaluation:
    """What `evaluate` returns, as `cifar eval --json` reports it."""

    loss: float
    accuracy: float
    per_class: list[dict[str, Any]]  # one row per class: class, count, correct, accuracy, precision
    confusion: np.ndarray  # classes x classes image counts; rows: true class, columns: predicted class
    classes: tuple[str, ...]
    images: int
    tta: bool


@dataclass
class Prediction:
    """What `predict` returns for one picture: the `top` classes, most likely first, and every probability."""

    image: str  # the file, or "image 3" for the fourth picture handed over in memory
    top: list[tuple[str, float]]
    probabilities: np.ndarray  # one per class, in `classes` order
    classes: tuple[str, ...]


def build(model: Network = DEFAULT_MODEL, **config: Any) -> nn.Module:
    """A fresh network: a preset by name, its settings (`cifar models`; NetConfig, S9Config) overridden by
    `config`; your own FILE.py:NAME; or your own nn.Module (or class), checked as `--model` networks are:
    N x 3 x 32 x 32 images to N x 10 logits. Seed torch first (torch.manual_seed) for repeatable weights."""
    spec = _spec(model, config)
    network = create_model(spec)
    if spec.is_preset:
        _BUILT_AS[network] = spec
    return network


def train(model: Network = DEFAULT_MODEL, *, epochs: int | None = None, seed: int | None = None,
          val_split: int | None = None, data_dir: str | Path | None = None, out: str | Path | None = None,
          device: str = "auto", download: bool = False, test: bool = True, overwrite: bool = False,
          progress: bool = True, tensorboard: bool = False, **settings: Any) -> TrainedRun:
    """Train as `cifar train` does: its settings (any TrainSettings field as a keyword, e.g. lr=0.05,
    batch_size=64; the defaults unless given), its loop, checkpoints and run folder in `out` (a temporary
    folder, deleted afterwards, when None). A name builds a fresh network from `seed` as `--model` does; a
    module is trained in place, from the weights it holds. `progress`: a live bar and a line per epoch;
    `tensorboard`: TensorBoard events in `out`/tensorboard/, as `cifar train --tensorboard` writes them."""
    given = {"epochs": epochs, "seed": seed, "val_split": val_split, **settings}
    where = resolve_device(device)
    network = model if isinstance(model, str) else _spec(model, {})
    plan = plan_run(None, given, test=test, augment_on=None, amp=None, model=network, device=where, tell=_tell)
    board = _tensorboard_log(out, plan) if tensorboard else None
    # A network file named as FILE.py:NAME is the user's choice to import it, as --model is: remembered. A module
    # handed over is not: its file may be the very script that trains it, which must not run again on `load`.
    for line in remember(plan.network) if isinstance(model, str) else []:
        _tell(line)
    splits = read_run_data(plan, _data_root(data_dir), download)
    with tempfile.TemporaryDirectory(prefix="cifar-run-") as scratch:
        out_dir = Path(out).expanduser() if out is not None else Path(scratch)
        result = _run(plan, splits, out_dir, where, overwrite, progress, kept=out is not None, board=board)
        trained = _network(load_checkpoint(out_dir / LAST), plan.network).to(where).eval()
    summed = headline(result.history)
    kept = out is not None
    return TrainedRun(trained, result.history, plan.settings, summed.of(result.history[-1]), summed.name,
                      result.best_epoch, out_dir if kept else None, out_dir / LAST if kept else None,
                      out_dir / BEST if kept and (out_dir / BEST).is_file() else None)


def _run(plan: Any, splits: tuple, out_dir: Path, device: torch.device, overwrite: bool, progress: bool,
         kept: bool, board: Any = None) -> Any:
    """The run itself (training.loop.train), drawn live when `progress` (and logged to `board`, a TensorBoard
    log); a stop (interrupting the kernel, Ctrl-C) saves as `cifar train` does and ends as a
    KeyboardInterrupt saying what was saved (nothing is kept of a run in a temporary folder)."""
    from cifar_cli.training.loop import train as run_training

    runtime = Runtime(amp=plan.choices.amp, augment_on=plan.choices.augment_on)
    try:
        with RichTrainObserver(console(stderr=True), enabled=progress) as bar, board or nullcontext():
            return run_training(plan.settings, *splits, out_dir, device, model_spec=plan.network, runtime=runtime,
                                observer=Observers(bar if progress else None, board), overwrite=overwrite)
    except TrainingInterrupted as stop:
        saved = stop.kept if stop.checkpoint is None else f"saved {stop.checkpoint}" if kept else \
            "nothing was kept: pass out= to keep the run"
        raise KeyboardInterrupt(f"training stopped at epoch {stop.epoch}, step {stop.step}; {saved}") from None


def _tensorboard_log(out: str | Path | None, plan: Any) -> Any:
    """tensorboard=True's log, its extra and folder checked before the run starts; it needs a kept run."""
    from cifar_cli.tensorboard_log import TensorBoardLog, check_folder

    if out is None:
        raise CifarError("tensorboard=True writes into out/tensorboard/: pass out= to keep the run and its events")
    check_folder(Path(out).expanduser(), resuming=False)
    return TensorBoardLog(Path(out).expanduser(), plan.settings, plan.network.name)


def load(checkpoint: str | Path, model: Network | None = None, *, device: str = "cpu") -> nn.Module:
    """The network of a checkpoint, as a plain nn.Module in eval mode: its state_dict holds the network's own
    keys, with no wrapper prefixes (no `module.`, `_orig_mod.` or averaging wrapper). A preset is rebuilt from
    the file alone; your own network needs `model` (a module, which is loaded in place, a class, or
    FILE.py:NAME): a checkpoint is never a reason to import code."""
    return _open(checkpoint, model, JUDGE).network.to(resolve_device(device)).eval()


def evaluate(network: str | Path | nn.Module, *, model: Network | None = None, images: str = "test",
             data_dir: str | Path | None = None, tta: bool | None = None, device: str = "auto",
             download: bool = False, batch_size: int = EVAL_BATCH_SIZE) -> Evaluation:
    """Loss, accuracy, per-class results and confusion matrix, as `cifar eval`: of a checkpoint (`model` as
    for `load`) or of a module. `images`: "test", "train" (the training images, un-augmented) or, for a
    checkpoint of a val_split run, "held-out". `tta`: flip test-time augmentation (None: the default, on)."""
    if images not in JUDGED:
        raise CifarError(f"images={images!r}: choose one of {', '.join(JUDGED)}")
    where, root = resolve_device(device), _data_root(data_dir)
    ckpt, net = _checkpoint_or_module(network, model, JUDGE if images == "test" else RUN_RECORD)
    if ckpt is not None:
        split = images_to_judge(ckpt, images, root, download)
    elif images == "held-out":
        raise CifarError('images="held-out" needs the checkpoint of a val_split run (its last.safetensors), '
                         "which says which images it held out; a module does not")
    else:
        split = eval_split(root, images, 0, download)
    tta = DEFAULTS.tta if tta is None else tta
    classes, mean, std = (ckpt.classes, ckpt.mean, ckpt.std) if ckpt is not None else (CLASSES, MEAN, STD)
    result = evaluate_split(net.to(where), split, where, batch_size=batch_size, classes=classes, mean=mean,
                            std=std, tta=tta, name=str(network) if ckpt is not None else "the network")
    return Evaluation(result.loss, result.accuracy, result.per_class, np.array(result.confusion, dtype=np.int64),
                      result.classes, len(split), tta)


def predict(network: str | Path | nn.Module, images: Any, *, model: Network | None = None, top: int = 3,
            tta: bool | None = None, device: str = "auto") -> list[Prediction]:
    """The most likely classes of pictures, as `cifar predict`: one Prediction per picture. `images`: a picture
    or a list of them, each a file path, a Pillow image or a uint8 H x W x 3 RGB array (a uint8 N x H x W x 3
    array is N pictures), resized to 32 x 32 as `cifar predict` does. A checkpoint's normalisation and class
    names are used (a module's: CIFAR-10's); `tta` as for `evaluate`."""
    if top < 1:
        raise CifarError(f"top={top}: ask for at least one class")
    where = resolve_device(device)
    ckpt, net = _checkpoint_or_module(network, model)
    names, pixels = _pictures(images)
    classes, mean, std = (ckpt.classes, ckpt.mean, ckpt.std) if ckpt is not None else (CLASSES, MEAN, STD)
    probs = class_probabilities(net.to(where), pixels, where, mean, std, tta=DEFAULTS.tta if tta is None else tta)
    best = probs.topk(min(top, probs.shape[1]), dim=1)
    return [Prediction(name, [(classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())],
                       row.numpy(), classes)
            for name, row, values, indices in zip(names, probs, best.values, best.indices)]


def _spec(model: Network, config: dict[str, Any]) -> ModelSpec:
    """The network `model` names: a preset with `config` over its settings, FILE.py:NAME, or a module, class
    or function handed over (a module `build` made from a preset stays that preset)."""
    if isinstance(model, str) and model in PRESETS:
        try:
            return ModelSpec(model, config_dict(PRESETS[model].config(config)))
        except ValueError as e:
            raise CifarError(f"{model}: {e}") from None
    if config:
        raise CifarError(f"settings such as {next(iter(config))}= are a preset's; {model!r} is not a preset "
                         f"({', '.join(PRESETS)})")
    if isinstance(model, str):
        return choose_network(model)
    if not isinstance(model, nn.Module) and not callable(model):
        raise CifarError(f"model={model!r}: expected a preset name, FILE.py:NAME, an nn.Module or a class")
    return handed_over(model, _BUILT_AS.get(model) if isinstance(model, nn.Module) else None)


def _open(checkpoint: str | Path, model: Network | None, purpose: str) -> Opened:
    """A checkpoint (or run folder) and its network, by the rule every command follows (opening.py); a
    module, class or function handed over as `model` is the network to load it into."""
    def handed(ckpt: Checkpoint, path: Path) -> ModelSpec:
        return spec_to_build(ckpt.model, _spec(model, {}), path)

    typed = model if isinstance(model, str) else None
    opened = open_checkpoint(Path(checkpoint), typed, _tell, purpose,
                             choose=None if model is None or typed is not None else handed)
    if opened.source_changed:
        warnings.warn(f"{opened.spec.name} has changed since {opened.path} was written (its source file's hash "
                      "differs); going on with the file as it is now", stacklevel=3)
    return opened


def _network(ckpt: Checkpoint, spec: ModelSpec) -> nn.Module:
    return model_from_checkpoint(ckpt, ckpt.source or "the checkpoint", given=spec)


def _tell(line: str) -> None:
    print(line, file=sys.stderr)


def _checkpoint_or_module(network: str | Path | nn.Module, model: Network | None,
                          purpose: str = JUDGE) -> tuple[Checkpoint | None, nn.Module]:
    if isinstance(network, nn.Module):
        return None, network
    if not isinstance(network, (str, Path)):
        raise CifarError(f"expected a checkpoint's path or an nn.Module, not a {type(network).__name__}")
    opened = _open(network, model, purpose)
    return opened.ckpt, opened.network


def _data_root(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def _pictures(images: Any) -> tuple[list[str], np.ndarray]:
    """Pictures in the forms a notebook holds them, as `cifar predict` reads files: their names, and uint8
    N x 32 x 32 x 3 RGB pixels."""
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (str, Path, np.ndarray, Image.Image)) or not isinstance(images, Sequence):
        images = [images]
    if not images:
        raise CifarError("no pictures to predict")
    names, pixels = [], []
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            names.append(str(image))
            pixels.append(load_image(Path(image)))
            continue
        names.append(f"image {i}")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise CifarError(f"image {i}: expected uint8 H x W x 3 RGB pixels, not {image.dtype} "
                                 f"{' x '.join(map(str, image.shape))}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise CifarError(f"image {i}: expected a file path, a Pillow image or a uint8 H x W x 3 array, not a "
                             f"{type(image).__name__}")
        pixels.append(picture_pixels(image, names[-1]))
    return names, np.stack(pixels)
