"""The training augmentation as batched torch operations: the GPU-resident data path's twin of augment.py.

Albumentations (augment.py) stays the reference, the CPU path and augment-preview's engine. This module
draws the same parameters from the same distributions and applies them to a whole uint8 batch on its
device, reproducing Albumentations 2.0.8 and OpenCV 5 pixel for pixel but for ties (a warped value whose
exact bilinear value is a half level, which float rounding order sends either way). Their quirks are part
of the spec (each measured in tests/test_device_augment.py):

- Affine's translation is `int(u * 32)` for u ~ U(-0.0625, 0.0625): a whole-pixel shift of -1, 0 or +1
  (0 half the time), never the 2 pixels the range suggests. x and y scale independently (keep_ratio is
  False), and the rotation turns about the pixel grid's centre (15.5, 15.5).
- The warp's border is the fill rounded to uint8 (OpenCV: 125, 123, 114); CoarseDropout's hole is the
  fill truncated (numpy's cast: 125, 122, 113).
- OpenCV 5's bilinear warp samples at float32 positions and blends in float32, so each value is the exact
  one rounded (OpenCV 4 rounded positions to 1/32 pixel); so does `warp_affine`.
- RandomBrightnessContrast truncates: uint8(clip(v * alpha + beta)) in float32, with alpha = 1 + U(-0.2,
  0.2) and beta = 255 * U(-0.2, 0.2).

Parameters are drawn with numpy from the batch's seed, on the CPU, so a batch's augmentation is the same
on every device and a resumed run repeats it exactly; the pixels are then worked on where they live.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
import torch

from cifar_cli.augment import BRIGHTNESS, CONTRAST, FLIP_P, HOLE_SIZE, MEAN_PIXEL, ROTATE, SCALE, SHIFT
from cifar_cli.settings import AugmentOdds

BORDER_FILL = tuple(int(np.round(v)) for v in MEAN_PIXEL)  # OpenCV's saturate_cast rounds the border value
HOLE_FILL = tuple(int(v) for v in MEAN_PIXEL)  # numpy's uint8 cast truncates the hole's fill


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the pipeline for each image of a batch: N-long tensors (N x 2 x 3 for `matrix`)."""

    flip: torch.Tensor  # bool: mirrored left-right
    warp: torch.Tensor  # bool: the Affine was applied
    matrix: torch.Tensor  # float64 source-to-destination matrices, as Albumentations builds them
    hole: torch.Tensor  # bool: CoarseDropout was applied
    corner: torch.Tensor  # int64 N x 2: the hole's (x, y) top-left corner
    tone: torch.Tensor  # bool: RandomBrightnessContrast was applied
    alpha: torch.Tensor  # float32 contrast factor
    beta: torch.Tensor  # float32 brightness offset, in pixel levels

    def to(self, device: torch.device) -> AugmentParams:
        return AugmentParams(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def affine_matrix(shift: np.ndarray, scale: np.ndarray, angle: np.ndarray, size: int) -> np.ndarray:
    """Albumentations' Affine matrix, N x 2 x 3: centre, scale (x, y), rotate `angle` degrees, shift, uncentre."""
    centre = size / 2 - 0.5
    radians = np.deg2rad(angle % 360)
    cos, sin = np.cos(radians), np.sin(radians)
    sx, sy = scale[:, 0], scale[:, 1]
    linear = np.stack([np.stack([cos * sx, sin * sy], -1), np.stack([-sin * sx, cos * sy], -1)], -2)
    offset = shift + centre - linear @ np.array([centre, centre])
    return np.concatenate([linear, offset[:, :, None]], axis=2)


def draw(count: int, seed: int, odds: AugmentOdds, size: int = 32) -> AugmentParams:
    """The parameters of `count` images, from the distributions Albumentations samples them from, each
    transform applied at its `odds`."""
    rng = np.random.default_rng(seed)
    shift = np.trunc(rng.uniform(-SHIFT, SHIFT, (count, 2)) * size)  # int(): towards zero, whole pixels
    matrix = affine_matrix(shift, rng.uniform(*SCALE, (count, 2)), rng.uniform(-ROTATE, ROTATE, count), size)
    return AugmentParams(
        flip=torch.from_numpy(rng.random(count) < FLIP_P),
        warp=torch.from_numpy(rng.random(count) < odds.affine),
        matrix=torch.from_numpy(matrix),
        hole=torch.from_numpy(rng.random(count) < odds.cutout),
        corner=torch.from_numpy(rng.integers(0, size - HOLE_SIZE + 1, (count, 2))),
        tone=torch.from_numpy(rng.random(count) < odds.tone),
        alpha=torch.from_numpy(1 + rng.uniform(-CONTRAST, CONTRAST, count)).float(),
        beta=torch.from_numpy(255 * rng.uniform(-BRIGHTNESS, BRIGHTNESS, count)).float(),
    )


def apply(images: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """The pipeline on uint8 N x 3 x H x W images (any layout, any device), parameters already drawn."""
    def chosen(mask: torch.Tensor) -> torch.Tensor:
        return mask.view(-1, 1, 1, 1)

    images = torch.where(chosen(p.flip), images.flip(3), images)
    images = torch.where(chosen(p.warp), warp_affine(images, p.matrix, BORDER_FILL), images)
    images = cut_hole(images, p.hole, p.corner, HOLE_FILL)
    return torch.where(chosen(p.tone), adjust_tone(images, p.alpha, p.beta), images)


def augment(images: torch.Tensor, seed: int, odds: AugmentOdds) -> torch.Tensor:
    """Draw a batch's parameters from its seed and apply them where the images are."""
    return apply(images, draw(len(images), seed, odds, images.shape[-1]).to(images.device))


@functools.lru_cache(maxsize=16)
def _constant(values: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Made once per device, like augment's normalisation constants: a fresh tensor every batch would be a
    host-to-GPU copy on the training step's path."""
    return torch.tensor(values, dtype=dtype, device=device)


def _inverse(matrix: torch.Tensor) -> torch.Tensor:
    """The destination-to-source matrices, inverted in double as cv2.warpAffine does."""
    m = matrix.double()
    a, b, c, d, e, f = (m[:, i, j] for i in range(2) for j in range(3))
    det = a * e - b * d
    scale = torch.where(det != 0, 1 / det, torch.zeros_like(det))
    ia, ib, id_, ie = e * scale, -b * scale, -d * scale, a * scale
    return torch.stack([torch.stack([ia, ib, -ia * c - ib * f], -1),
                        torch.stack([id_, ie, -id_ * c - ie * f], -1)], -2)


def warp_affine(images: torch.Tensor, matrix: torch.Tensor, fill: tuple[int, ...]) -> torch.Tensor:
    """cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT) of each uint8 image by its source-to-destination
    matrix. OpenCV 5 samples at float32 positions and blends in float32; so does this."""
    n, c, h, w = images.shape
    inverse = _inverse(matrix).float().view(n, 2, 3, 1, 1)
    ys = torch.arange(h, device=images.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, w)
    sx = inverse[:, 0, 0] * xs + inverse[:, 0, 1] * ys + inverse[:, 0, 2]
    sy = inverse[:, 1, 0] * xs + inverse[:, 1, 1] * ys + inverse[:, 1, 2]
    x0, y0 = sx.floor(), sy.floor()
    fx, fy = (sx - x0).unsqueeze(1), (sy - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    flat = images.reshape(n, c, h * w)
    border = _constant(fill, torch.float32, images.device).view(1, c, 1, 1)

    def pixel(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        inside = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)).unsqueeze(1)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
        return torch.where(inside, flat.gather(2, index).view(n, c, h, w).float(), border)

    top_left, top_right = pixel(y0, x0), pixel(y0, x0 + 1)
    bottom_left, bottom_right = pixel(y0 + 1, x0), pixel(y0 + 1, x0 + 1)
    top = top_left + fx * (top_right - top_left)
    bottom = bottom_left + fx * (bottom_right - bottom_left)
    return (top + fy * (bottom - top)).round_().clamp_(0, 255).to(torch.uint8)  # round(): half to even, as cvRound


def cut_hole(images: torch.Tensor, chosen: torch.Tensor, corner: torch.Tensor, fill: tuple[int, ...]) -> torch.Tensor:
    """CoarseDropout: a HOLE_SIZE square at each chosen image's corner (x, y), filled with `fill`."""
    n, c, h, w = images.shape
    xs = torch.arange(w, device=images.device).view(1, 1, w)
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    x, y = corner[:, 0].view(n, 1, 1), corner[:, 1].view(n, 1, 1)
    inside = (xs >= x) & (xs < x + HOLE_SIZE) & (ys >= y) & (ys < y + HOLE_SIZE) & chosen.view(n, 1, 1)
    value = _constant(fill, torch.uint8, images.device).view(1, c, 1, 1)
    return torch.where(inside.unsqueeze(1), value, images)


def adjust_tone(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """RandomBrightnessContrast on uint8: v * alpha + beta in float32, clipped, then truncated (its lookup table)."""
    levels = images.float() * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)
    return levels.clamp_(0, 255).to(torch.uint8)
