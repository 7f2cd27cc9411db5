"""The Albumentations pipelines: the one definition that `train` and `augment-preview` both use."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from cifar_cli.data import MEAN, STD

# CoarseDropout fills its hole with the dataset mean, in the uint8 pixel scale it runs on.
MEAN_PIXEL: tuple[float, float, float] = tuple(255.0 * m for m in MEAN)
HOLE_SIZE = 16


def train_pipeline(seed: int | None = None) -> A.Compose:
    """The reference CIFAR-10 augmentation, in Albumentations 2.x argument names.

    Argument names matter: 2.x silently ignores the 1.x ones (max_holes, fill_value, ...).
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            # ShiftScaleRotate(0.0625, 0.1, 15) written as the Affine that 2.x asks for.
            A.Affine(
                translate_percent=(-0.0625, 0.0625),
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_CONSTANT,
                fill=MEAN_PIXEL,
                p=0.5,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(HOLE_SIZE, HOLE_SIZE),
                hole_width_range=(HOLE_SIZE, HOLE_SIZE),
                fill=MEAN_PIXEL,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
            ToTensorV2(),
        ],
        seed=seed,
    )


def eval_pipeline(mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> A.Compose:
    """What every evaluated image goes through: normalisation only (with a checkpoint's own constants)."""
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])


class PipelineTransform:
    """Turns an Albumentations pipeline into the uint8 HWC image -> float CHW tensor callable a Dataset wants."""

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.pipeline(image=image)["image"]

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed % 2**32)


def describe(pipeline: A.Compose) -> list[str]:
    """One line per transform with the arguments that differ from its defaults (for printing)."""
    return [repr(t) for t in pipeline.transforms]


def denormalize(batch: torch.Tensor) -> np.ndarray:
    """Normalised float N x 3 x H x W back to uint8 N x H x W x 3, to show what the network sees."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    pixels = (batch.float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def preview(images: np.ndarray, labels: list[str], views: int,
            seed: int) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """For each uint8 image, `views` draws of the training pipeline, turned back into pixels."""
    transform = PipelineTransform(train_pipeline(seed=seed))
    return [(label, image, list(denormalize(torch.stack([transform(image) for _ in range(views)]))))
            for image, label in zip(images, labels)]
