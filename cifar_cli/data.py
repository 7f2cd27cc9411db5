"""CIFAR-10 on disk: where it lives, how it is fetched, and how its batches become uint8 arrays; the
held-out slice; the epoch's batch plan and the batches it serves. (A user's own picture files: pictures.py.)

This module holds the dataset's facts (class names, normalisation constants) once, for everyone.
It never knows the network.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cifar_cli.errors import CifarError
from cifar_cli.files import read_input
from cifar_cli.settings import AugmentOdds

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Per-channel statistics of the 50,000 training images, as fractions of 255.
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.247, 0.243, 0.261)

FOLDER = "cifar-10-batches-py"  # torchvision's name for the extracted "python version"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def default_data_dir() -> Path:
    """A per-user cache folder: $CIFAR_DATA_DIR, else $XDG_CACHE_HOME/cifar-cli, else ~/.cache/cifar-cli."""
    if env := os.environ.get("CIFAR_DATA_DIR"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "cifar-cli"


@dataclass(frozen=True)
class Split:
    """Images as uint8 N x 32 x 32 x 3 (HWC, RGB) and labels as int64 N."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


MAX_BATCH_BYTES = 2**30  # an official batch is 31 MB

# The batches are Python pickles, and a pickle can run any code it names. The real files only name
# numpy's array reconstruction, so nothing else is allowed in.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes when written from Python 3
}


class _Refused(pickle.UnpicklingError):
    pass


def _bounded_bytes(*args: object) -> bytes:
    """bytes(), as numpy's pickles of empty arrays call it; a forged bytes(10**12) is refused, not allocated."""
    if args and isinstance(args[0], int) and args[0] > MAX_BATCH_BYTES:
        raise _Refused(f"refusing bytes({args[0]}), larger than any CIFAR-10 batch")
    return bytes(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):
            return _bounded_bytes
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"refusing to load {module}.{name}, which a CIFAR-10 batch never contains")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> object:
    raw = read_input(path, MAX_BATCH_BYTES, "CIFAR-10 batch")
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as e:
        raise CifarError(f"{path} is not a CIFAR-10 batch: {e}") from None
    except Exception as e:  # truncated or garbled files raise all sorts of things
        raise CifarError(f"{path} is corrupt ({type(e).__name__}: {e})") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    if not isinstance(batch, dict):
        raise CifarError(f"{path} is not a CIFAR-10 batch (expected a dict, found {type(batch).__name__})")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarError(f"{path} is corrupt: 'data' should be uint8 N x 3072, found {found}")
    labels = _labels(labels, len(data), path)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CifarError(f"{path} is corrupt: labels outside 0..{len(CLASSES) - 1}")
    # Stored channel-major (R plane, G plane, B plane); the augmentation library wants HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _labels(labels: object, count: int, path: Path) -> np.ndarray:
    """'labels': a flat list of whole numbers, one per image (floats and nesting are refused, not rounded)."""
    array = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
    if array is None or array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        found = f"{array.dtype} {array.shape}" if array is not None else type(labels).__name__
        raise CifarError(f"{path} is corrupt: 'labels' must be a flat list of whole numbers, found {found}")
    if array.shape != (count,):
        raise CifarError(f"{path} is corrupt: {count} images but {array.size} labels")
    return array.astype(np.int64)


def dataset_folder(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / FOLDER


def download(data_dir: Path) -> None:
    """Fetch and extract the official archive with torchvision, which checks its md5."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR10.url, str(data_dir), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as e:  # no network, a proxy page, a bad checksum, a full disk
        raise CifarError(f"could not download CIFAR-10 into {data_dir}: {e}") from None


def ensure_downloaded(data_dir: Path) -> None:
    """Download the dataset into `data_dir` unless all its batch files are there."""
    folder = dataset_folder(data_dir)
    if not all((folder / name).is_file() for name in (*TRAIN_BATCHES, *TEST_BATCHES)):
        download(Path(data_dir).expanduser())


def load_split(data_dir: Path, train: bool, download_missing: bool = False) -> Split:
    """Read the training (50,000) or test split from `data_dir`/cifar-10-batches-py."""
    folder = dataset_folder(data_dir)
    names = TRAIN_BATCHES if train else TEST_BATCHES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download_missing:
        download(Path(data_dir).expanduser())
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CifarError(
            f"CIFAR-10 not found: {folder / missing[0]} is missing; pass --download to fetch it, "
            "or --data-dir for the folder that holds cifar-10-batches-py"
        )
    parts = [_read_batch(folder / n) for n in names]
    split = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    if not len(split):
        raise CifarError(f"{folder} holds no {'training' if train else 'test'} images: its batches are empty")
    return split


def identify(split: Split) -> dict[str, int | str]:
    """What tells one set of images from another: its size, and a hash of every label and every image
    (150 MB of training images hash in about 0.1 s)."""
    digest = hashlib.sha256(np.ascontiguousarray(split.labels).tobytes())
    digest.update(memoryview(np.ascontiguousarray(split.images)).cast("B"))
    return {"images": len(split), "sha256": digest.hexdigest(), "hashed": "every image"}


def _sampled_identity(split: Split) -> dict[str, int | str]:
    """How checkpoints older than `identify`, which hashes every image, told training sets apart: every label and
    every 97th image. Checkpoints of that time carry this."""
    digest = hashlib.sha256(np.ascontiguousarray(split.labels).tobytes())
    digest.update(np.ascontiguousarray(split.images[::97]).tobytes())
    return {"images": len(split), "sha256": digest.hexdigest()}


def same_images(recorded: dict[str, Any], split: Split) -> bool:
    """Whether `split` is the set of images a fingerprint (`identify`'s, or an older sampled one) was taken of."""
    if recorded.get("hashed") == "every image":
        return recorded == identify(split)
    return recorded == _sampled_identity(split)


def describe_identity(recorded: dict[str, Any], kind: str = "") -> str:
    """A fingerprint in words: "300 training images, fingerprint 0123456789ab"."""
    images = recorded.get("images")
    count = f"{images:,}" if isinstance(images, int) else "an unknown number of"
    return f"{count} {kind + ' ' if kind else ''}images, fingerprint {str(recorded.get('sha256', '?'))[:12]}"


# The held-out slice is the same for every --seed, so runs with different seeds are judged on the same images.
HOLD_OUT_SEED = 20_240_601


def hold_out(split: Split, count: int) -> tuple[Split, Split]:
    """(rest, held out): `count` images drawn at random, once and for all, to judge settings by.

    The test set is only for the final figure; choices made by looking at it would flatter it.
    `count` is checked once, by TrainSettings.validate, before a run gets here.
    """
    order = np.random.default_rng(HOLD_OUT_SEED).permutation(len(split))
    rest, held = np.sort(order[count:]), np.sort(order[:count])
    return (Split(split.images[rest], split.labels[rest]), Split(split.images[held], split.labels[held]))


def eval_split(data_dir: Path, images: str, val_split: int | None, download_missing: bool = False,
               trained_on: dict[str, Any] | None = None) -> Split:
    """The images `cifar eval` judges: "test", or a run's "train" images (those it learned from) or its
    "held-out" ones, for a run that held out `val_split` images (None: some, but not known how many).

    `trained_on` is the run's fingerprint of its training set (identify): the held-out images are only
    held out if this data holds the very training images the run drew them from, so other data is refused.
    """
    if images == "test":
        return load_split(data_dir, train=False, download_missing=download_missing)
    if val_split is None:
        raise CifarError(f"--images {images} needs the run's last.safetensors: this file is from a --val-split "
                         "run but holds weights only, so it cannot say which images were held out")
    if images == "held-out" and not val_split:
        raise CifarError("this run trained on every training image: --images held-out needs a run "
                         "trained with --val-split")
    full = load_split(data_dir, train=True, download_missing=download_missing)
    if trained_on and not same_images(trained_on, full):
        raise CifarError(f"the run trained on other images ({describe_identity(trained_on, 'training')}) than "
                         f"this data's {len(full):,}: its {images} images would not be the run's; pass the "
                         "--data-dir it trained on")
    if not val_split:
        return full
    if not 0 < val_split < len(full):  # a file we read may say anything
        raise CifarError(f"the run held out {val_split:,} training images, but this data has only {len(full):,}: "
                         "is it the data the run trained on?")
    rest, held = hold_out(full, val_split)
    return held if images == "held-out" else rest


# The random streams a run draws from, each seeded by derive_seed(seed, epoch, rank, batch, STREAM).
AUGMENT_STREAM = 0  # a batch's augmentations (EpochBatches)
DROPOUT_STREAM = 1  # a training step's dropout masks (training.loop)
MIXUP_STREAM = 2  # whether and how a training step blends its batch (training.loop)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (run seed, epoch, ...), so each piece of randomness stands alone."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


class EpochBatches:
    """The batch plan of one epoch: which images, in what order, with what augmentation seed and odds.

    The order is a permutation seeded by (seed, epoch). With `world` > 1 processes, rank r takes every
    world-th image of it (disjoint shares of equal size). Each batch carries its own seed, and the run's
    `odds` scaled by how much of the augmentation is left where it falls in the run's `epochs`: over the
    last `fade` of the run they fall linearly to zero (`augmentation_left`). `set_epoch` moves to another
    epoch, optionally skipping the batches a resumed run has already trained on. Used as a DataLoader
    batch_sampler; it yields (batch seed, image indices, odds).
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, *,
                 odds: AugmentOdds, fade: float = 0.0, epochs: int = 1):
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.odds, self.fade, self.epochs = odds, fade, epochs
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def per_rank(self) -> int:
        return self.size // self.world

    def batches_per_epoch(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def indices(self) -> np.ndarray:
        """This rank's images for the current epoch, in order."""
        order = np.random.default_rng(derive_seed(self.seed, self.epoch)).permutation(self.size)
        return order[self.rank::self.world][: self.per_rank]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start

    def progress(self, epoch: int, batch: int) -> float:
        """How far through the run (0 to 1) batch `batch` (from 0) of `epoch` begins."""
        count = self.batches_per_epoch()
        return ((epoch - 1) * count + batch) / (self.epochs * count)

    def augmentation_left(self, epoch: int, batch: int) -> float:
        """How much of the augmentation is left at batch `batch` (from 0) of `epoch`: 1 until the fade
        begins, then falling linearly to 0 at the run's end."""
        left = max(0.0, 1.0 - self.progress(epoch, batch))  # past the end (more epochs than the run has): zero
        return 1.0 if left >= self.fade else left / self.fade

    def odds_at(self, epoch: int, batch: int) -> AugmentOdds:
        """The odds batch `batch` (from 0) of `epoch` is augmented with."""
        return AugmentOdds(*(p * self.augmentation_left(epoch, batch) for p in self.odds))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, AugmentOdds]]:
        mine, size, count = self.indices(), self.batch_size, self.batches_per_epoch()
        for b in range(self.start, count):
            seed = derive_seed(self.seed, self.epoch, self.rank, b, AUGMENT_STREAM)
            yield seed, mine[b * size:(b + 1) * size], self.odds_at(self.epoch, b)


class AugmentedBatches(Dataset):
    """Serves whole batches: (batch seed, indices, odds) -> augmented uint8 N x 3 x 32 x 32 images and labels.

    The images tensor is a channels_last view of the N x H x W x 3 array: no copy, and the layout the
    network runs fastest in.
    """

    def __init__(self, split: Split, augment: Callable[[np.ndarray, int, AugmentOdds], np.ndarray]):
        self.split, self.augment = split, augment

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, batch: tuple[int, np.ndarray, AugmentOdds]) -> tuple[torch.Tensor, torch.Tensor]:
        seed, indices, odds = batch
        images = self.augment(self.split.images[indices], seed, odds)
        return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(self.split.labels[indices])


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """One host-to-device copy; on CUDA from pinned memory, so that the host need not wait for it."""
    host = torch.from_numpy(array)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


# Images the device path augments per call on a GPU: each operation's launch shared by a chunk of batches,
# its working memory bounded. On the CPU, one batch a call: a chunk's working set falls out of the caches
# (16 batches of 128 at once: 2.8x the time a batch).
CHUNK_IMAGES = 2048


def batches_per_chunk(device: torch.device, batch_size: int) -> int:
    return max(1, CHUNK_IMAGES // batch_size) if device.type != "cpu" else 1


class DeviceBatches:
    """The GPU-resident path: the training set uploaded once, served as whole augmented batches.

    The same batch plan and batch seeds as the loader path, so resume is exact at any batch. Batches are
    augmented a chunk at a time (`batches_per_chunk`): `augment` takes the chunk's uint8 N x 3 x H x W
    images where they live and each batch's (seed, image count, odds) in order, and draws each batch from its
    own seed (device_augment.augment_chunk), so a batch is the same whichever chunk it falls in. No
    DataLoader or workers: on a GPU, per-image work on a few CPU cores would set the pace.
    """

    def __init__(self, split: Split, plan: EpochBatches,
                 augment: Callable[[torch.Tensor, Sequence[tuple[int, int, AugmentOdds]]], torch.Tensor],
                 device: torch.device):
        self.plan, self.augment, self.device = plan, augment, device
        self.images = torch.from_numpy(split.images).to(device).permute(0, 3, 1, 2)  # channels_last view
        self.labels = torch.from_numpy(split.labels).to(device)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches, per_chunk = iter(self.plan), batches_per_chunk(self.device, self.plan.batch_size)
        while chunk := list(itertools.islice(batches, per_chunk)):
            chosen = upload(np.concatenate([indices for _, indices, _ in chunk]), self.device)
            images = self.augment(self.images[chosen], [(seed, len(indices), odds) for seed, indices, odds in chunk])
            labels, start = self.labels[chosen], 0
            for _, indices, _ in chunk:
                yield images[start:start + len(indices)], labels[start:start + len(indices)]
                start += len(indices)


def batches_in_order(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split's uint8 images as N x 3 x H x W channels_last tensors with labels, in file order."""
    for start in range(0, len(split), batch_size):
        images = torch.from_numpy(split.images[start:start + batch_size]).permute(0, 3, 1, 2)
        yield images, torch.from_numpy(split.labels[start:start + batch_size])
