"""Checkpoints: weights in safetensors, and in its metadata everything needed to rebuild and judge them.

Tensors are named `model.<param>` (the weights the metrics describe: the weight average or lookahead's
slow weights when training kept either) and, in resumable checkpoints, `optimizer.<index>.<key>` and,
with such a second copy, the trained weights as `raw.<param>`. Metadata
(strings only, per the format) holds JSON: the model config, epoch, metrics, normalisation constants,
class names, package version and, for resuming, the optimizer/scheduler/run state.
Writes are atomic: a temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from cifar_cli import __version__, schema
from cifar_cli.data import CLASSES, MEAN, STD
from cifar_cli.errors import CifarError, shell_command
from cifar_cli.files import read_input, write_atomic
from cifar_cli.models import DEFAULT_MODEL, LEGACY_MODEL, ModelSpec, create_model, spec_to_build

FORMAT = "cifar-cli/1"
PROBE_IMAGES = 8  # images of the batch every loaded network must give finite logits for (_probe)
MAX_EPOCHS = 10**9  # what an epoch count may be; a run of more would take centuries
MAX_CHECKPOINT_BYTES = 2**31  # a network under our rules is under 1 MB; 2 GiB leaves room for anyone's
# The 40-epoch default run whose figures the README states, shipped inside the package.
PACKAGED_CHECKPOINT = Path(__file__).parent / "weights" / "cifarnet-whiten-40ep.safetensors"


@dataclass
class Checkpoint:
    model: ModelSpec  # which network: a preset and its settings, or the user's FILE.py:NAME
    model_state: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = CLASSES
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    version: str = __version__
    # Only in resumable checkpoints: optimizer state tensors and the JSON-able rest of the run's state.
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    raw_state: dict[str, torch.Tensor] = field(default_factory=dict)  # trained weights, when model_state is a copy
    source: Path | None = None  # the file it was read from (not saved)


def weights_only(ckpt: Checkpoint) -> Checkpoint:
    """The same checkpoint without what only resuming needs (optimizer, run state, raw weights)."""
    return replace(ckpt, optimizer_tensors={}, train_state=None, raw_state={})


class NonFinite(CifarError):
    """Weights, statistics or results that are NaN or infinite: a network that has diverged."""


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or infinity, if any."""
    return next((name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically; refuses (NonFinite) weights, statistics or optimizer state that are not finite,
    so that a diverged network never replaces the last good checkpoint."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model_state.items()}
    tensors.update({f"optimizer.{k}": v.detach().cpu().contiguous() for k, v in ckpt.optimizer_tensors.items()})
    tensors.update({f"raw.{k}": v.detach().cpu().contiguous() for k, v in ckpt.raw_state.items()})
    if (bad := first_non_finite(tensors)) is not None:
        raise NonFinite(f"not writing {path}: {bad} holds NaN or infinity")
    metadata = {
        "format": FORMAT,
        "model": json.dumps(ckpt.model.to_dict()),
        "epoch": str(ckpt.epoch),
        "metrics": json.dumps(ckpt.metrics),
        "classes": json.dumps(list(ckpt.classes)),
        "normalization": json.dumps({"mean": list(ckpt.mean), "std": list(ckpt.std)}),
        "version": ckpt.version,
    }
    if ckpt.train_state is not None:
        metadata["train_state"] = json.dumps(ckpt.train_state)
    try:
        write_atomic(Path(path), save_bytes(tensors, metadata=metadata))
    except OSError as e:
        raise CifarError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def _json_field(metadata: dict[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise CifarError(f"{path} is not a complete cifar-cli checkpoint: metadata has no {key!r}")
    try:
        return json.loads(metadata[key])
    except (TypeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested a million deep
        raise CifarError(f"{path} is corrupt: metadata {key!r} is not valid JSON") from None


def _read_metadata(raw: bytes, path: Path) -> dict[str, str]:
    """Parse the safetensors header: 8-byte little-endian length, then a JSON object."""
    if len(raw) < 8:
        raise CifarError(f"{path} is not a safetensors checkpoint (only {len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise CifarError(f"{path} is truncated or not a safetensors file (header says {n} bytes)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CifarError(f"{path} is not a safetensors file (its header is not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _is_pickle(raw: bytes) -> bool:
    """Known by content, whatever the suffix: torch.save writes a zip container (PK..) around a pickle;
    older files are a bare pickle.

    A bare pickle opens with PROTO (0x80) and its protocol number. A safetensors file opens with its
    8-byte header length, whose first byte is 0x80 for about one length in 32, followed by "{".
    """
    if raw[:4] == b"PK\x03\x04":
        return True
    return raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and raw[8:9] != b"{"


# What a normalisation may be: CIFAR-10's means are about 0.47 and its stds 0.25 (of pixels in [0, 1]). Far
# outside these, normalised pixels overflow float32 or lose every difference between them.
MEAN_RANGE, STD_RANGE = (-10.0, 10.0), (1e-3, 1e3)


def _normalization(norm: Any, path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Three means and three positive stds within sane ranges: anything else would poison every input."""
    try:
        mean, std = norm["mean"], norm["std"]
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
            raise schema.Invalid("normalization", "must hold three means and three stds")
        std_values = [schema.number(x, f"normalization std[{i}]", -math.inf, math.inf) for i, x in enumerate(std)]
        if min(std_values) <= 0:
            raise schema.Invalid("normalization", f"std of {min(std_values)} would divide by zero or flip signs")
        return (tuple(schema.number(x, f"normalization mean[{i}]", *MEAN_RANGE) for i, x in enumerate(mean)),
                tuple(schema.number(x, f"normalization std[{i}]", *STD_RANGE) for i, x in enumerate(std)))
    except (KeyError, TypeError):
        raise CifarError(f"{path} is corrupt: normalization must hold three finite means and three stds") from None
    except schema.Invalid as e:
        raise CifarError(f"{path} is corrupt: {e}") from None


def _metrics(metrics: Any, path: Path) -> dict[str, Any]:
    """The figures a checkpoint carries: finite numbers (accuracies in [0, 1]), or words (a converted file's
    origin)."""
    def checked(key: str, value: Any) -> Any:
        if isinstance(value, str):
            return value
        return schema.number(value, f"metrics {key[:40]!r}", 0.0 if key.endswith("_acc") else -1e38,
                             1.0 if key.endswith("_acc") else 1e38)

    try:
        return {key: checked(key, value) for key, value in schema.mapping(metrics, "metrics").items()}
    except schema.Invalid as e:
        raise CifarError(f"{path} is corrupt: {e}") from None


def _model_spec(metadata: dict[str, str], path: Path) -> ModelSpec:
    """The network a checkpoint holds. The oldest files wrote `model_config` instead, always cifarnet-ds."""
    try:
        if "model" in metadata or "model_config" not in metadata:
            return ModelSpec.from_dict(_json_field(metadata, "model", path))
        legacy = _json_field(metadata, "model_config", path)
        if not isinstance(legacy, dict) or legacy.get("arch", LEGACY_MODEL) != LEGACY_MODEL:
            raise ValueError(f"architecture {legacy.get('arch') if isinstance(legacy, dict) else legacy!r} "
                             f"is not {LEGACY_MODEL!r}")
        return ModelSpec.from_dict({"name": LEGACY_MODEL, "config": {k: v for k, v in legacy.items() if k != "arch"}})
    except ValueError as e:
        raise CifarError(f"{path} is for another architecture: {e}") from None


def load_checkpoint(path: Path, model: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint; any problem becomes a CifarError with a one-line reason. `model`:
    the --model the user gave, repeated in the command suggested for a pickle."""
    path = Path(path).expanduser()
    raw = read_input(path, MAX_CHECKPOINT_BYTES, "checkpoint")
    if _is_pickle(raw):
        raise CifarError(f"{path} is a PyTorch pickle, and loading a pickle can run any code in it, so cifar-cli "
                         f"reads only .safetensors; if you trust the file, convert it: {_convert_hint(path, model)}")

    metadata = _read_metadata(raw, path)
    if metadata.get("format") != FORMAT:
        raise CifarError(f"{path} is not a cifar-cli checkpoint (metadata format is {metadata.get('format')!r},"
                         f" expected {FORMAT!r})")
    try:
        tensors = load_bytes(raw)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise CifarError(f"{path} is corrupt: {e}") from None

    model = _model_spec(metadata, path)
    try:
        epoch = schema.digits(metadata.get("epoch", "0"), "epoch", MAX_EPOCHS)
    except schema.Invalid as e:
        raise CifarError(f"{path} is corrupt: {e}") from None
    mean, std = _normalization(_json_field(metadata, "normalization", path), path)
    train_state = _json_field(metadata, "train_state", path) if "train_state" in metadata else None

    def prefixed(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return Checkpoint(model=model, model_state=prefixed("model."), epoch=epoch,
                      metrics=_metrics(_json_field(metadata, "metrics", path), path),
                      classes=_classes(_json_field(metadata, "classes", path), model, path), mean=mean, std=std,
                      version=str(metadata.get("version", "?"))[:100], optimizer_tensors=prefixed("optimizer."),
                      train_state=train_state if isinstance(train_state, dict) else None,
                      raw_state=prefixed("raw."), source=path)


def _classes(classes: Any, model: ModelSpec, path: Path) -> tuple[str, ...]:
    num_classes = model.config.get("num_classes", len(CLASSES))
    if not (isinstance(classes, list) and len(classes) == num_classes
            and all(isinstance(c, str) and len(c) <= 100 for c in classes)):
        raise CifarError(f"{path} is corrupt: class names do not match its {num_classes} classes")
    if num_classes != len(CLASSES):
        raise CifarError(f"{path} is for {num_classes} classes; CIFAR-10 has {len(CLASSES)}")
    return tuple(classes)


def _convert_hint(path: Path, model: str | None) -> str:
    """The convert command for a pickle: its weights fit one network, which only the user can name."""
    target = path.with_suffix(".safetensors")
    if target == path or target.exists():
        target = path.with_name(f"{path.stem}-converted.safetensors")
    command = shell_command(["cifar", "convert", path, target, *(["--model", model] if model else [])])
    return command if model else f"{command} (with --model NAME if it holds another network than {DEFAULT_MODEL})"


def model_from_checkpoint(ckpt: Checkpoint, path: Path | str = "checkpoint", raw: bool = False,
                          given: ModelSpec | None = None) -> nn.Module:
    """Build the network the checkpoint describes and load its weights, refusing any mismatch.

    A preset is rebuilt from the file alone. A user network is rebuilt only from `given`, the --model the
    user typed: a checkpoint is never a reason to import code. `raw` asks for the training weights (to
    resume), which differ from model_state only under an EMA.
    """
    spec = spec_to_build(ckpt.model, given, path)
    state = ckpt.raw_state if raw and ckpt.raw_state else ckpt.model_state
    if spec.is_preset:
        with torch.device("meta"):  # shapes only: a forged config cannot make us allocate a huge network
            expected = create_model(spec).state_dict()
    else:
        expected = (model := create_model(spec)).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CifarError(f"{path} does not match the {spec.describe()} architecture ({what})")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CifarError(f"{path} does not match the {spec.describe()} architecture: {name} is "
                             f"{got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")
    if (bad := first_non_finite(state)) is not None:
        raise CifarError(f"{path} holds non-finite weights (NaN or infinity in {bad}); it cannot be used")
    if spec.is_preset:
        model = create_model(spec)
    model.load_state_dict(state)
    _probe(model, ckpt, path)
    return model


def _probe(model: nn.Module, ckpt: Checkpoint, path: Path | str) -> None:
    """Judge what the network computes, not only the numbers stored: finite logits for a small fixed batch of
    ordinary images (black, white, grey and random pixels), normalised as the checkpoint says. Finite weights
    of 3e38, or a std of 1e-30, pass every stored-number check and still give infinity."""
    from cifar_cli.augment import normalize  # the normalisation every command applies

    pixels = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, 3, 32, 32), dtype=np.uint8)
    pixels[:3] = np.array([0, 255, 128], dtype=np.uint8)[:, None, None, None]
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(normalize(torch.from_numpy(pixels), ckpt.mean, ckpt.std))
    except Exception as e:  # a user's network may raise anything
        raise CifarError(f"{path}: its network failed on a probe batch of {PROBE_IMAGES} images: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or not torch.isfinite(logits).all():
        raise NonFinite(f"{path} holds a network that computes NaN or infinity for ordinary images (a probe "
                        f"batch of {PROBE_IMAGES}); it cannot be used")


def network_spec(ckpt: Checkpoint, given: ModelSpec | None) -> ModelSpec:
    """The network to build for a checkpoint, by the one rule every command follows (resume, eval, predict,
    ...): a preset from the file, a user network only from `given`, the --model the user typed."""
    return spec_to_build(ckpt.model, given, ckpt.source or "the checkpoint")
