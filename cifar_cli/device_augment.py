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
on every device and a resumed run repeats it exactly; the warp's matrices are inverted there too. The pixels
are then worked on where they live. On a GPU, where a batch's work is dozens of tiny kernels and the launches
set the pace, `augment_chunk` augments several batches in one go (each still from its own seed): their
parameters packed in one array, uploaded once, and each operation launched once for the lot.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from cifar_cli.augment import BRIGHTNESS, CONTRAST, FLIP_P, HOLE_SIZE, MEAN_PIXEL, ROTATE, SCALE, SHIFT
from cifar_cli.data import upload
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

    def packed(self) -> np.ndarray:
        """The parameters as one float32 N x PACKED array (`pack`), for one upload."""
        return pack(**{f.name: getattr(self, f.name).cpu().numpy() for f in fields(self)})


# The columns of a packed draw: flip, warp, hole, tone (0 or 1), the hole's corner x, y, alpha, beta, and
# the destination-to-source matrix's six entries. float32 holds each exactly as the pipeline uses it: the
# flags and corners are small integers, alpha and beta are float32, the warp samples with a float32 matrix.
FLAGS, CORNER, ALPHA, BETA, INVERSE, PACKED = slice(0, 4), slice(4, 6), 6, 7, slice(8, 14), 14


def pack(flip: np.ndarray, warp: np.ndarray, matrix: np.ndarray, hole: np.ndarray, corner: np.ndarray,
         tone: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    packed = np.empty((len(flip), PACKED), np.float32)
    packed[:, FLAGS] = np.stack([flip, warp, hole, tone], 1)
    packed[:, CORNER] = corner
    packed[:, ALPHA], packed[:, BETA] = alpha, beta
    packed[:, INVERSE] = invert(matrix).reshape(-1, 6)
    return packed


def affine_matrix(shift: np.ndarray, scale: np.ndarray, angle: np.ndarray, size: int) -> np.ndarray:
    """Albumentations' Affine matrix, N x 2 x 3: centre, scale (x, y), rotate `angle` degrees, shift, uncentre."""
    centre = size / 2 - 0.5
    radians = np.deg2rad(angle % 360)
    cos, sin = np.cos(radians), np.sin(radians)
    sx, sy = scale[:, 0], scale[:, 1]
    linear = np.stack([np.stack([cos * sx, sin * sy], -1), np.stack([-sin * sx, cos * sy], -1)], -2)
    offset = shift + centre - linear @ np.array([centre, centre])
    return np.concatenate([linear, offset[:, :, None]], axis=2)


def invert(matrix: np.ndarray) -> np.ndarray:
    """The destination-to-source matrices of N x 2 x 3 source-to-destination ones, in double as
    cv2.warpAffine inverts them (a singular one gives zeros, as there)."""
    a, b, c, d, e, f = (matrix[:, i, j].astype(np.float64) for i in range(2) for j in range(3))
    det = a * e - b * d
    with np.errstate(divide="ignore"):
        scale = np.where(det != 0, 1 / np.where(det != 0, det, 1), 0.0)
    ia, ib, id_, ie = e * scale, -b * scale, -d * scale, a * scale
    return np.stack([np.stack([ia, ib, -ia * c - ib * f], -1), np.stack([id_, ie, -id_ * c - ie * f], -1)], -2)


def _draws(count: int, seed: int, odds: AugmentOdds, size: int) -> dict[str, np.ndarray]:
    """The parameters of `count` images, as numpy arrays, from the batch's own random stream."""
    rng = np.random.default_rng(seed)
    shift = np.trunc(rng.uniform(-SHIFT, SHIFT, (count, 2)) * size)  # int(): towards zero, whole pixels
    matrix = affine_matrix(shift, rng.uniform(*SCALE, (count, 2)), rng.uniform(-ROTATE, ROTATE, count), size)
    return dict(
        flip=rng.random(count) < FLIP_P,
        warp=rng.random(count) < odds.affine,
        matrix=matrix,
        hole=rng.random(count) < odds.cutout,
        corner=rng.integers(0, size - HOLE_SIZE + 1, (count, 2)),
        tone=rng.random(count) < odds.tone,
        alpha=(1 + rng.uniform(-CONTRAST, CONTRAST, count)).astype(np.float32),
        beta=(255 * rng.uniform(-BRIGHTNESS, BRIGHTNESS, count)).astype(np.float32),
    )


def draw(count: int, seed: int, odds: AugmentOdds, size: int = 32) -> AugmentParams:
    """The parameters of `count` images, from the distributions Albumentations samples them from, each
    transform applied at its `odds`."""
    return AugmentParams(**{name: torch.from_numpy(values) for name, values in _draws(count, seed, odds, size).items()})


def apply(images: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """The pipeline on uint8 N x 3 x H x W images (any layout, any device), parameters already drawn."""
    return apply_packed(images, upload(p.packed(), images.device))


def augment(images: torch.Tensor, seed: int, odds: AugmentOdds) -> torch.Tensor:
    """Draw a batch's parameters from its seed and apply them where the images are."""
    return augment_chunk(images, [(seed, len(images), odds)])


def augment_chunk(images: torch.Tensor, batches: Sequence[tuple[int, int, AugmentOdds]]) -> torch.Tensor:
    """Several batches, one after the other in `images`, augmented in one go: each batch of `count` images
    has its parameters drawn from its own `seed` at its `odds` (so each is what `augment` gives it alone),
    all of them uploaded at once, and each operation launched once for the lot rather than once a batch."""
    size = images.shape[-1]
    packed = np.concatenate([pack(**_draws(count, seed, odds, size)) for seed, count, odds in batches])
    return apply_packed(images, upload(packed, images.device))


def apply_packed(images: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """The pipeline on uint8 N x 3 x H x W images, by packed parameters already where the images are."""
    flags = packed[:, FLAGS].view(-1, 4, 1, 1, 1) > 0.5
    flip, warp, hole, tone = flags.unbind(1)
    images = torch.where(flip, images.flip(3), images)
    images = torch.where(warp, warp_inverse(images, packed[:, INVERSE], BORDER_FILL), images)
    images = cut_hole(images, hole.view(-1), packed[:, CORNER].long(), HOLE_FILL)
    return torch.where(tone, adjust_tone(images, packed[:, ALPHA], packed[:, BETA]), images)


@functools.lru_cache(maxsize=16)
def _constant(values: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Made once per device, like augment's normalisation constants: a fresh tensor every batch would be a
    host-to-GPU copy on the training step's path."""
    return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel rows (1 x H x 1) and columns (1 x 1 x W), made once per device."""
    return (torch.arange(h, device=device, dtype=dtype).view(1, h, 1),
            torch.arange(w, device=device, dtype=dtype).view(1, 1, w))


def _inverse(matrix: torch.Tensor) -> torch.Tensor:
    """`invert` for a tensor of matrices: float64 destination-to-source matrices."""
    return torch.from_numpy(invert(matrix.cpu().numpy()))


def warp_affine(images: torch.Tensor, matrix: torch.Tensor, fill: tuple[int, ...]) -> torch.Tensor:
    """cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT) of each uint8 image by its source-to-destination
    matrix. OpenCV 5 samples at float32 positions and blends in float32; so does this."""
    inverse = torch.from_numpy(invert(matrix.cpu().numpy()).astype(np.float32))
    return warp_inverse(images, inverse.to(images.device), fill)


def warp_inverse(images: torch.Tensor, inverse: torch.Tensor, fill: tuple[int, ...]) -> torch.Tensor:
    """`warp_affine` by float32 destination-to-source matrices (N x 2 x 3, or N x 6)."""
    n, c, h, w = images.shape
    inverse = inverse.reshape(n, 2, 3, 1, 1)
    ys, xs = _grid(h, w, torch.float32, images.device)
    sx = inverse[:, 0, 0] * xs + inverse[:, 0, 1] * ys + inverse[:, 0, 2]
    sy = inverse[:, 1, 0] * xs + inverse[:, 1, 1] * ys + inverse[:, 1, 2]
    x0, y0 = sx.floor(), sy.floor()
    fx, fy = (sx - x0).unsqueeze(1), (sy - y0).unsqueeze(1)
    # The images inside a one-pixel frame of the border value: a position outside the image, clamped into
    # the frame, reads the border, so the four neighbours of every position are one gather.
    framed = _constant(fill, torch.float32, images.device).view(1, c, 1, 1).repeat(n, 1, h + 2, w + 2)
    framed[:, :, 1:-1, 1:-1] = images
    x0, y0 = x0.long(), y0.long()
    left, right = x0.clamp(-1, w) + 1, (x0 + 2).clamp(0, w + 1)
    top, bottom = (y0.clamp(-1, h) + 1) * (w + 2), (y0 + 2).clamp(0, h + 1) * (w + 2)
    index = torch.stack([top + left, top + right, bottom + left, bottom + right], 1).view(n, 1, 4 * h * w)
    corners = framed.view(n, c, -1).gather(2, index.expand(n, c, 4 * h * w)).view(n, c, 4, h, w)
    top_left, top_right, bottom_left, bottom_right = corners.unbind(2)
    upper = top_left + fx * (top_right - top_left)
    lower = bottom_left + fx * (bottom_right - bottom_left)
    return (upper + fy * (lower - upper)).round_().clamp_(0, 255).to(torch.uint8)  # round(): half to even, as cvRound


def cut_hole(images: torch.Tensor, chosen: torch.Tensor, corner: torch.Tensor, fill: tuple[int, ...]) -> torch.Tensor:
    """CoarseDropout: a HOLE_SIZE square at each chosen image's corner (x, y), filled with `fill`."""
    n, c, h, w = images.shape
    ys, xs = _grid(h, w, torch.int64, images.device)
    x, y = corner[:, 0].view(n, 1, 1), corner[:, 1].view(n, 1, 1)
    inside = (xs >= x) & (xs < x + HOLE_SIZE) & (ys >= y) & (ys < y + HOLE_SIZE) & chosen.view(n, 1, 1)
    value = _constant(fill, torch.uint8, images.device).view(1, c, 1, 1)
    return torch.where(inside.unsqueeze(1), value, images)


def adjust_tone(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """RandomBrightnessContrast on uint8: v * alpha + beta in float32, clipped, then truncated (its lookup table)."""
    levels = images.float() * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)
    return levels.clamp_(0, 255).to(torch.uint8)
