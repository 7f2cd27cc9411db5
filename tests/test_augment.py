"""The training pipeline: the reference augmentations with arguments that Albumentations 2.x really uses."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from conftest import REAL_DATA

from cifar_cli.augment import HOLE_SIZE, MEAN_PIXEL, BatchAugmenter, normalize, preview, train_pipeline
from cifar_cli.data import MEAN, STD, EpochBatches, load_split
from cifar_cli.settings import DEFAULTS, AugmentOdds, TrainSettings


@pytest.fixture
def real_image(tiny_data: Path) -> np.ndarray:
    """A real CIFAR-10 training image when $CIFAR_DATA_DIR has them, else one from the fixture files."""
    root = REAL_DATA or tiny_data
    return load_split(root, train=False).images[3]


def test_pipeline_has_the_reference_transforms_in_order() -> None:
    names = [type(t).__name__ for t in train_pipeline(DEFAULTS.augment_odds).transforms]
    assert names == ["HorizontalFlip", "Affine", "CoarseDropout", "RandomBrightnessContrast"]


def test_batched_normalize_is_albumentations_normalize(real_image: np.ndarray) -> None:
    reference = A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0, p=1.0)(image=real_image)["image"]
    batch = torch.from_numpy(np.stack([real_image, real_image])).permute(0, 3, 1, 2)
    ours = normalize(batch)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ours[1].permute(1, 2, 0), torch.from_numpy(reference), atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_coarse_dropout_cuts_one_16x16_hole_filled_with_the_mean(real_image: np.ndarray, seed: int) -> None:
    dropout = next(t for t in train_pipeline(DEFAULTS.augment_odds).transforms if isinstance(t, A.CoarseDropout))
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
    first = preview(images, ["a", "b"], views=4, seed=3, odds=DEFAULTS.augment_odds)
    again = preview(images, ["a", "b"], views=4, seed=3, odds=DEFAULTS.augment_odds)
    other = preview(images, ["a", "b"], views=4, seed=4, odds=DEFAULTS.augment_odds)
    assert all((x == y).all() for r1, r2 in zip(first, again) for x, y in zip(r1[2], r2[2]))
    assert any((x != y).any() for r1, r2 in zip(first, other) for x, y in zip(r1[2], r2[2]))
    views = first[0][2]
    assert views[0].shape == (32, 32, 3) and views[0].dtype == np.uint8
    assert any((v != real_image).any() for v in views)


def test_a_fading_run_feeds_full_odds_until_the_fade_then_less_and_less() -> None:
    """--aug-fade: each batch of the plan carries its odds; the last fifth of the run fades them to zero."""
    settings = TrainSettings(epochs=5, aug_fade=0.2)
    plan = EpochBatches(300, 30, seed=3, odds=settings.augment_odds, fade=settings.aug_fade, epochs=settings.epochs)
    odds = []
    for epoch in range(1, 6):
        plan.set_epoch(epoch)
        odds += [o for _, _, o in plan]
    assert odds[:40] == [settings.augment_odds] * 40  # epochs 1-4: as the run asks
    last = [o.cutout for o in odds[40:]]
    assert last[0] == pytest.approx(0.5) and last[-1] == pytest.approx(0.05)
    assert all(a > b > 0 for a, b in zip(last, last[1:]))
    assert all(o.affine == o.cutout == o.tone for o in odds)
    plan = EpochBatches(300, 30, seed=3, odds=settings.augment_odds, fade=0, epochs=5)
    plan.set_epoch(5)
    assert {o for _, _, o in plan} == {settings.augment_odds}  # --aug-fade 0: no fade


def test_a_batchs_odds_rule_its_augmentation_and_only_it(tiny_data: Path) -> None:
    """With odds of zero only the flip is left; the next batch at the usual odds is augmented as ever."""
    images = load_split(tiny_data, train=True).images[:64]
    augmenter = BatchAugmenter(train_pipeline(DEFAULTS.augment_odds))
    flipped_only = augmenter(images, 5, AugmentOdds(0.0, 0.0, 0.0))
    same, mirrored = [np.array_equal(a, b) for a, b in zip(flipped_only, images)], \
        [np.array_equal(a, b[:, ::-1]) for a, b in zip(flipped_only, images)]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54
    usual = augmenter(images, 6, DEFAULTS.augment_odds)
    assert np.array_equal(usual, BatchAugmenter(train_pipeline(DEFAULTS.augment_odds))(images, 6))
    assert sum(not np.array_equal(a, b) and not np.array_equal(a, b[:, ::-1]) for a, b in zip(usual, images)) > 32
