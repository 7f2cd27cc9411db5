"""What a trained network gets wrong, and why: its mistakes and Grad-CAM maps.

Functions take a network and data and return values; report.py draws them and the cli package prints them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_cli.checkpoint import Checkpoint
from cifar_cli.data import MEAN, STD, Split, load_split
from cifar_cli.errors import CifarError
from cifar_cli.graph import trace_graph
from cifar_cli.pictures import load_image
from cifar_cli.settings import DEFAULTS
from cifar_cli.training.evaluation import predict, to_device

MIN_CAM_SIZE = 8  # a heat map from a 4x4 or smaller feature map says little about where the network looked


# --- mistakes ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mistake:
    index: int  # position in the test set
    true: int
    predicted: int
    probability: float  # the network's confidence in its wrong answer


def find_mistakes(model: nn.Module, split: Split, device: torch.device, mean: tuple[float, ...] = MEAN,
                  std: tuple[float, ...] = STD, tta: bool = False,
                  progress: Callable[[int], None] | None = None) -> list[Mistake]:
    """Every misclassified image, the most confident mistakes first (ties: by index); `progress` is told
    how many images are done."""
    probs = predict(model, split.images, device, mean, std, tta=tta, progress=progress)
    confidence, predicted = probs.max(1)
    wrong = np.flatnonzero(predicted.numpy() != split.labels)
    mistakes = [Mistake(int(i), int(split.labels[i]), int(predicted[i]), float(confidence[i])) for i in wrong]
    return sorted(mistakes, key=lambda m: (-m.probability, m.index))


def class_named(name: str, classes: tuple[str, ...], option: str = "--class") -> str:
    """The class a user names, in any case (`Cat` is cat); a one-line error listing them if none fits."""
    for known in classes:
        if known.casefold() == name.casefold():
            return known
    raise CifarError(f"{option} {name}: choose one of {', '.join(classes)}")


def common_confusions(mistakes: list[Mistake], top: int = 5) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the most frequent kinds of mistake."""
    counts = Counter((m.true, m.predicted) for m in mistakes)
    return [(t, p, n) for (t, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


# --- Grad-CAM ------------------------------------------------------------------------------------------------

def spatial_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every module whose output is a feature map (N x C x H x W), with its H x W, in forward order."""
    shapes: dict[str, tuple[int, int]] = {}
    names = {m: n for n, m in model.named_modules() if n}
    hooks = [m.register_forward_hook(lambda mod, i, o: _note(shapes, names[mod], o)) for m in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _note(shapes: dict[str, tuple[int, int]], name: str, output: object) -> None:
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        shapes.setdefault(name, tuple(output.shape[-2:]))


def default_cam_layer(model: nn.Module) -> str:
    """The last convolution whose output is at least 8x8."""
    convs = [c.name for c in trace_graph(model).layers
             if isinstance(c.module, nn.Conv2d) and min(c.out_shape[-2:]) >= MIN_CAM_SIZE]
    if not convs:
        raise CifarError("no convolution has an output of 8x8 or more; name a layer with --layer")
    return convs[-1]


def cam_layer(model: nn.Module, name: str | None) -> tuple[str, tuple[int, int]]:
    """The layer to explain (the default unless named) and its output size; a one-line error otherwise."""
    layers = spatial_layers(model)
    name = name or default_cam_layer(model)
    if name not in layers:
        known = dict(model.named_modules())
        why = "has no spatial output (not N x C x H x W)" if name in known else "is not a layer of this network"
        raise CifarError(f"--layer {name} {why}; layers with a feature map: {', '.join(layers)}")
    return name, layers[name]


def gradcam(model: nn.Module, images: np.ndarray, layer: str, targets: list[int], device: torch.device,
            mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> np.ndarray:
    """Grad-CAM heat maps (N x H x W in 0..1, at the images' size) for uint8 N x H x W x 3 images, each
    for its target class, from the named layer (pytorch-grad-cam does the hooks and the arithmetic)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model.to(device).eval()
    x = to_device(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), device, mean, std)
    with _no_inplace(model), GradCAM(model, target_layers=[dict(model.named_modules())[layer]]) as cam:
        return cam(input_tensor=x.contiguous(), targets=[ClassifierOutputTarget(t) for t in targets])


class _no_inplace:  # noqa: N801 - used as a context manager, like torch.no_grad
    """In-place ReLUs overwrite the activations the gradient hooks need; switch them off for the map."""

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if getattr(m, "inplace", False)]

    def __enter__(self) -> None:
        for m in self.modules:
            m.inplace = False

    def __exit__(self, *exc: object) -> None:
        for m in self.modules:
            m.inplace = True


@dataclass(frozen=True)
class CamInputs:
    """The pictures Grad-CAM explains (uint8 N x H x W x 3), a title for each, the class explained for each,
    and the same as rows for --json."""

    pixels: np.ndarray
    titles: list[str]
    targets: list[int]
    rows: list[dict]


def cam_inputs(pictures: list[Path] | None, mistakes: int | None, target: str, model: nn.Module,
               ckpt: Checkpoint, device: torch.device, data_dir: Path, download: bool,
               progress: Callable[[int], None] | None = None, noted: Callable[[str], None] | None = None
               ) -> CamInputs:
    """What gradcam explains: the picture files given, or the `mistakes` most confident misclassified test
    images; for each, the `target` class ("predicted", or "true", which only test images have). Predictions
    are as `cifar predict` and `cifar mistakes` make them (flip TTA by default), so titles agree."""
    if bool(pictures) == (mistakes is not None):
        raise CifarError("give picture files or --mistakes N, one of the two")
    if mistakes is not None:
        pixels, labels, names = _test_mistakes(mistakes, model, ckpt, device, data_dir, download, progress)
    else:
        if target == "true":
            raise CifarError("--target true needs the true class: use --mistakes (picture files have none)")
        pixels, labels, names = (np.stack([load_image(p, noted=noted) for p in pictures]), None,
                                 [p.name for p in pictures])
    probs = predict(model, pixels, device, ckpt.mean, ckpt.std, tta=DEFAULTS.tta)
    predicted = probs.argmax(1).tolist()
    targets = labels if target == "true" else predicted
    classes, rows, titles = ckpt.classes, [], []
    for i, name in enumerate(names):
        guess = f"{classes[predicted[i]]} {100 * float(probs[i, predicted[i]]):.0f}%"
        titles.append(f"{name}: {classes[labels[i]]} -> {guess}" if labels else f"{name}: {guess}")
        rows.append({"image": name, "predicted": classes[predicted[i]],
                     "probability": float(probs[i, predicted[i]]), "explained": classes[targets[i]],
                     **({"true": classes[labels[i]]} if labels else {})})
    return CamInputs(pixels, titles, targets, rows)


def _test_mistakes(count: int, model: nn.Module, ckpt: Checkpoint, device: torch.device, data_dir: Path,
                   download: bool, progress: Callable[[int], None] | None = None
                   ) -> tuple[np.ndarray, list[int], list[str]]:
    """The `count` most confident mistakes on the test set: their pixels, true classes and names."""
    if count < 1:
        raise CifarError(f"--mistakes must be at least 1, not {count}")
    split = load_split(data_dir, train=False, download_missing=download)
    shown = find_mistakes(model, split, device, ckpt.mean, ckpt.std, tta=DEFAULTS.tta, progress=progress)[:count]
    if not shown:
        raise CifarError(f"the network misclassifies none of the {len(split):,} test images: nothing to explain")
    return split.images[[m.index for m in shown]], [m.true for m in shown], [f"test #{m.index}" for m in shown]


# --- learning-rate range test --------------------------------------------------------------------------------

MIN_START_LR = 1e-10  # a step this small moves no float32 weight of ordinary size: lower only wastes steps
REAL_FALL = 0.1  # a fall of the smoothed loss by a tenth of where it began is learning, not noise
MIN_FALL_STEPS = 3  # fewer mini-batches before the lowest loss are no stretch to judge a fall by
