"""The training pipeline: the reference augmentations with arguments that Albumentations 2.x really uses."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from conftest import REAL_DATA

from cifar_cli.augment import HOLE_SIZE, MEAN_PIXEL, normalize, preview, train_pipeline
from cifar_cli.data import MEAN, STD, load_split


@pytest.fixture
def real_image(tiny_data: Path) -> np.ndarray:
    """A real CIFAR-10 training image when ../shared/data is there, else one from the fixture files."""
    root = REAL_DATA or tiny_data
    return load_split(root, train=False).images[3]


def test_pipeline_has_the_reference_transforms_in_order() -> None:
    names = [type(t).__name__ for t in train_pipeline().transforms]
    assert names == ["HorizontalFlip", "Affine", "CoarseDropout", "RandomBrightnessContrast"]


def test_batched_normalize_is_albumentations_normalize(real_image: np.ndarray) -> None:
    reference = A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0, p=1.0)(image=real_image)["image"]
    batch = torch.from_numpy(np.stack([real_image, real_image])).permute(0, 3, 1, 2)
    ours = normalize(batch)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ours[1].permute(1, 2, 0), torch.from_numpy(reference), atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_coarse_dropout_cuts_one_16x16_hole_filled_with_the_mean(real_image: np.ndarray, seed: int) -> None:
    dropout = next(t for t in train_pipeline().transforms if isinstance(t, A.CoarseDropout))
    dropout.p = 1.0
    out = A.Compose([dropout], seed=seed)(image=real_image)["image"]
    changed = np.argwhere((out != real_image).any(axis=2))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0) + 1
    assert (y1 - y0, x1 - x0) == (HOLE_SIZE, HOLE_SIZE)
    # uint8 images get the mean truncated to whole levels: (125, 122, 113)
    assert (np.abs(out[y0:y1, x0:x1] - np.array(MEAN_PIXEL)) < 1).all()
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (out[outside] == real_image[outside]).all()


def test_preview_is_reproducible_and_really_augments(real_image: np.ndarray) -> None:
    images = np.stack([real_image, real_image[::-1]])
    first = preview(images, ["a", "b"], views=4, seed=3)
    again = preview(images, ["a", "b"], views=4, seed=3)
    other = preview(images, ["a", "b"], views=4, seed=4)
    assert all((x == y).all() for r1, r2 in zip(first, again) for x, y in zip(r1[2], r2[2]))
    assert any((x != y).any() for r1, r2 in zip(first, other) for x, y in zip(r1[2], r2[2]))
    views = first[0][2]
    assert views[0].shape == (32, 32, 3) and views[0].dtype == np.uint8
    assert any((v != real_image).any() for v in views)
