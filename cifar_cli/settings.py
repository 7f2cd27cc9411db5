"""What a training run is asked to do: the settings, their defaults and their checks, in one place.

Torch-free, so the command line can read the defaults for its --help texts without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

from cifar_cli.errors import CifarError

DEVICES = ("auto", "cuda", "cpu", "mps")  # --device choices; auto picks CUDA, then MPS, then CPU
# --augment-on choices: auto augments on the GPU for CUDA runs (device_augment), with loader workers elsewhere
AUGMENT_PLACES = ("auto", "device", "loader")
DEFAULT_MODEL = "cifarnet-whiten"  # the preset --model names when not given (registered in models/presets.py)
MAX_LR = 1e6  # a learning rate beyond this is a typo, and past 3e38 it overflows float32 in the optimizer
MAX_SEED = 2**63 - 1  # numpy's SeedSequence and torch.manual_seed both take it
# Images per forward pass when evaluating or predicting. Not larger: on the CPU a batch of 1000 is slower,
# since each 32x32 activation of it is hundreds of MB of freshly page-faulted memory (the measurement is in
# results/timings.md, "Evaluation batch size"). Results do not depend on it.
EVAL_BATCH_SIZE = 256
MAX_EPOCHS = 1_000_000  # a million epochs of CIFAR-10 would take years; more is a typo (or a forged file)
MAX_MIXUP = 100.0  # Beta(100, 100) already blends every batch within a few points of half and half; more is a typo


class AugmentOdds(NamedTuple):
    """How often the augmentation pipeline applies each of its random transforms (besides the flip)."""

    affine: float  # ShiftScaleRotate
    cutout: float  # CoarseDropout
    tone: float  # RandomBrightnessContrast


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the result of a run (device, workers and AMP on the CPU do not)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv/linear weights only, not BatchNorm or biases
    label_smoothing: float = 0.1
    seed: int = 0
    val_split: int = 0  # training images held out to judge settings by (0: train on all of them)
    ema: float = 0.0  # per-step decay of a weight average that is evaluated and saved instead (0: off)
    lookahead: float = 0.95  # per-step decay of lookahead's slow weights at the run's end (0: off), as airbench
    tta: bool = True  # evaluate on each image and its mirror image, averaging the logits (+0.4 pt held-out)
    # How often the pipeline applies each of its random transforms (the flip is always at 0.5).
    affine_p: float = 0.5  # ShiftScaleRotate (the assignment's reference network trained with 0.3)
    cutout_p: float = 0.5  # CoarseDropout, one 16x16 hole
    tone_p: float = 0.5  # RandomBrightnessContrast (the reference network: 0.2)
    # The last fraction of the run over which those odds fall linearly to zero, batch by batch (0: off):
    # the network ends its training on images like the ones it will be judged on. 0.4: chosen against 0, 0.2
    # and 0.6 on held-out images (results/experiments.md, "Fading the augmentation out at the end").
    aug_fade: float = 0.4
    # Mixup: each batch blended with a shuffled copy of itself, the blend's weight drawn from Beta(a, a)
    # (0: off). Its odds fade with the augmentation's, so the run still ends on plain images. Off by default:
    # it did not pay on held-out images (results/experiments.md, "Mixup before the fade").
    mixup: float = 0.0

    def validate(self, train_size: int | None = None) -> None:
        """Refuse impossible settings; `train_size` also bounds the held-out slice."""
        if self.epochs < 1:
            raise CifarError(f"--epochs must be at least 1, not {self.epochs}")
        if self.epochs > MAX_EPOCHS:
            raise CifarError(f"--epochs must be at most {MAX_EPOCHS:,}, not {self.epochs}")
        if not 1 <= self.batch_size <= MAX_SEED:
            raise CifarError(f"--batch-size must be at least 1 (and below 2**63), not {self.batch_size}")
        if not 0 < self.momentum < 1:  # not an option, but a checkpoint's settings may say anything
            raise CifarError(f"momentum must be in (0, 1): Nesterov SGD needs some; not {self.momentum}")
        if not 0 < self.lr <= MAX_LR:  # also refuses nan; past float32's range torch itself overflows
            raise CifarError(f"--lr must be a positive number up to {MAX_LR:g}, not {self.lr}")
        if not 0 <= self.seed <= MAX_SEED:
            raise CifarError(f"--seed must be between 0 and {MAX_SEED}, not {self.seed}")
        if self.val_split < 0 or (train_size is not None and self.val_split >= train_size):
            bound = f" and below the {train_size:,} training images" if train_size is not None else ""
            raise CifarError(f"--val-split must be >= 0{bound}, not {self.val_split}")
        if not 0 <= self.weight_decay <= 1:  # also refuses nan
            raise CifarError(f"--weight-decay must be between 0 and 1, not {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise CifarError(f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            raise CifarError(f"--ema must be a decay in [0, 1) (0 turns it off), not {self.ema}")
        if not 0 <= self.lookahead < 1:
            raise CifarError(f"--lookahead must be a decay in [0, 1) (0 turns it off), not {self.lookahead}")
        for flag, p in (("--affine-p", self.affine_p), ("--cutout-p", self.cutout_p), ("--tone-p", self.tone_p)):
            if not 0 <= p <= 1:  # also refuses nan
                raise CifarError(f"{flag} must be a probability in [0, 1], not {p}")
        if not 0 <= self.aug_fade <= 1:
            raise CifarError(f"--aug-fade must be a fraction of the run in [0, 1], not {self.aug_fade}")
        if not 0 <= self.mixup <= MAX_MIXUP:  # also refuses nan
            raise CifarError(f"--mixup must be a Beta concentration in [0, {MAX_MIXUP:g}] (0 turns it off), "
                             f"not {self.mixup}")
        if self.ema and self.lookahead:
            raise CifarError("--ema and --lookahead each keep a second copy of the weights: choose one")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def augment_odds(self) -> AugmentOdds:
        """How often the pipeline applies each transform before the fade (data.EpochBatches fades them)."""
        return AugmentOdds(self.affine_p, self.cutout_p, self.tone_p)

    @classmethod
    def from_dict(cls, data: Any) -> TrainSettings | None:
        """Settings as a checkpoint stored them, or None if they are not all there with the right kinds."""
        try:
            settings = cls(**({**SETTINGS_BEFORE_THEY_EXISTED, **data}))
        except TypeError:
            return None
        return settings if _wrong_kind(settings) is None else None

    def with_options(self, **given: Any) -> TrainSettings:
        """These settings with the options the user gave (None: not given) put over them.

        An average asked for (--ema) replaces lookahead unless that is given too: both are a second copy.
        A name that is no setting, or a value of the wrong kind (the Python API takes any), is a CifarError.
        """
        names = [f.name for f in fields(self)]
        if unknown := sorted(set(given) - set(names)):
            raise CifarError(f"{unknown[0]!r} is not a training setting; the settings are {', '.join(names)}")
        if given.get("ema") and given.get("lookahead") is None:
            given = {**given, "lookahead": 0.0}
        settings = replace(self, **{k: v for k, v in given.items() if v is not None})
        if (wrong := _wrong_kind(settings)) is not None:
            raise CifarError(f"setting {wrong}")
        return settings

    def differences(self, other: TrainSettings) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


DEFAULTS = TrainSettings()
# What a checkpoint that predates a setting ran with: runs saved before lookahead became the default did
# without it, and resuming them must not switch it on; those before the augmentation's odds were settings
# ran with 0.5 each, and without a fade, whatever the defaults become.
SETTINGS_BEFORE_THEY_EXISTED: dict[str, Any] = {"lookahead": 0.0, "affine_p": 0.5, "cutout_p": 0.5, "tone_p": 0.5,
                                                "aug_fade": 0.0}


def _wrong_kind(settings: TrainSettings) -> str | None:
    """The first field not holding its kind of value, as 'NAME must be ...', or None if every one does."""
    for f in fields(settings):
        if (problem := setting_problem(f.name, getattr(settings, f.name))) is not None:
            return f"{f.name} {problem}"
    return None


def setting_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` as the setting `name`, in words ('must be an integer, not '3''), or None.
    Ints stay ints; a float field also takes an int; flags are bools."""
    default = next(f.default for f in fields(TrainSettings) if f.name == name)
    wanted = bool if isinstance(default, bool) else (int, float) if isinstance(default, float) else int
    if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
        kind = {bool: "true or false", int: "an integer"}.get(wanted, "a number")
        return f"must be {kind}, not {repr(value)[:80]}"
    return None
