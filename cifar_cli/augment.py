"""The augmentation pipeline: the one definition that `train` and `augment-preview` both use.

Albumentations does the per-image work on uint8 pixels; the final Normalize step runs batched on the
training device (`normalize`), where it costs next to nothing instead of half the per-image time.
"""

from __future__ import annotations

import functools

import albumentations as A
import cv2
import numpy as np
import torch

from cifar_cli.data import MEAN, STD
from cifar_cli.settings import AugmentOdds

# The pipeline's numbers, read by both implementations (this one and device_augment's torch one); how
# often each transform applies is a run setting (TrainSettings.augment_odds), the flip's excepted.
FLIP_P = 0.5
SHIFT, SCALE, ROTATE = 0.0625, (0.9, 1.1), 15.0  # ShiftScaleRotate(0.0625, 0.1, 15)
HOLE_SIZE = 16
BRIGHTNESS, CONTRAST = 0.2, 0.2  # RandomBrightnessContrast
# Borders and holes are filled with the dataset mean, in the uint8 pixel scale the pipeline runs on.
MEAN_PIXEL: tuple[float, float, float] = tuple(255.0 * m for m in MEAN)


def train_pipeline(odds: AugmentOdds, seed: int | None = None) -> A.Compose:
    """The reference CIFAR-10 augmentation (before Normalize), in Albumentations 2.x argument names, applying
    its random transforms as often as `odds` says (a run's TrainSettings.augment_odds).

    Argument names matter: 2.x silently ignores the 1.x ones (max_holes, fill_value, ...).
    uint8 H x W x 3 in, uint8 H x W x 3 out.
    """
    pipeline = A.Compose(
        [
            A.HorizontalFlip(p=FLIP_P),
            # ShiftScaleRotate written as the Affine that 2.x asks for.
            A.Affine(
                translate_percent=(-SHIFT, SHIFT),
                scale=SCALE,
                rotate=(-ROTATE, ROTATE),
                border_mode=cv2.BORDER_CONSTANT,
                fill=MEAN_PIXEL,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(HOLE_SIZE, HOLE_SIZE),
                hole_width_range=(HOLE_SIZE, HOLE_SIZE),
                fill=MEAN_PIXEL,
            ),
            A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS, contrast_limit=CONTRAST),
        ],
        seed=seed,
    )
    set_odds(pipeline, odds)
    return pipeline


def set_odds(pipeline: A.Compose, odds: AugmentOdds) -> None:
    """Make train_pipeline's transforms apply as often as `odds` says (Albumentations reads p at each call):
    the one place that ties each of the odds to its transform."""
    _, affine, cutout, tone = pipeline.transforms
    affine.p, cutout.p, tone.p = odds


def normalize(images: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """Albumentations' Normalize(mean, std, max_pixel_value=255) for a uint8 N x 3 x H x W batch, on its device.

    The result keeps the input's memory format (channels_last batches stay channels_last).
    """
    scale, shift = _normalize_constants(images.device, tuple(mean), tuple(std))
    return images.float().mul_(scale).sub_(shift)


@functools.lru_cache(maxsize=8)
def _normalize_constants(device: torch.device, mean: tuple[float, ...],
                         std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: normalize runs every step, and a fresh tensor would be a copy to the GPU each time."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


class BatchAugmenter:
    """Runs the pipeline over a batch of uint8 images with one seed for the whole batch.

    Seeding per batch (not per process) makes every batch's augmentations depend only on its seed: the
    same whatever the number of loader workers, and repeatable when a run resumes mid-epoch.
    """

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def __call__(self, images: np.ndarray, seed: int, odds: AugmentOdds | None = None) -> np.ndarray:
        """The batch augmented; with `odds`, the pipeline applies its random transforms that often from now on."""
        cv2.setNumThreads(1)  # OpenCV's thread pool costs more than it gives on 32x32 images: +20% images/s
        if odds is not None:
            set_odds(self.pipeline, odds)
        self.pipeline.set_random_seed(seed % 2**32)
        out = np.empty_like(images)
        for i, image in enumerate(images):
            out[i] = self.pipeline(image=image)["image"]
        return out


def describe(pipeline: A.Compose) -> list[str]:
    """One line per transform, Normalize (run batched on the device) last."""
    return [repr(t) for t in pipeline.transforms] + [f"Normalize(mean={MEAN}, std={STD}) batched on the device"]


def preview(images: np.ndarray, labels: list[str], views: int, seed: int,
            odds: AugmentOdds) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """For each uint8 image, `views` draws of the training pipeline: the pixels the network is fed."""
    pipeline = train_pipeline(odds, seed=seed)
    return [(label, image, [pipeline(image=image)["image"] for _ in range(views)])
            for image, label in zip(images, labels)]
