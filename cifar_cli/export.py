"""`cifar export`: a checkpoint's network as a file other programs run without cifar-cli. ONNX, through torch's
own exporter, with the normalisation and flip TTA inside and the class names in its metadata; or a plain
PyTorch state_dict, for the user's own class. Each file is checked on real images before it is written, and
one that does not compute what `cifar predict` computes is never left behind."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifar_cli import __version__
from cifar_cli.checkpoint import Checkpoint
from cifar_cli.data import TEST_BATCHES, dataset_folder, load_split
from cifar_cli.errors import CifarError
from cifar_cli.extras import require
from cifar_cli.files import refuse_unless_ours, write_atomic
from cifar_cli.pictures import example_pictures, load_images
from cifar_cli.terminal import counted
from cifar_cli.training.evaluation import logits_of, to_device

FORMATS = ("onnx", "state_dict")
SUFFIXES = {"onnx": (".onnx",), "state_dict": (".pt", ".pth")}
ONNX_LIMIT = 1e-4  # the largest |logit difference| between onnxruntime and torch that passes
CHECK_BATCH = 256  # images per batch of the check; the first image is also run alone, a batch of 1
TRACE_BATCH = 2  # the example batch the exporter traces; torch.export would fix a batch of 1 as a constant
EXPORTER = "torch.onnx.export(dynamo=True)"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
NORMALIZATION = "applied inside the model, (x - mean) / std per channel: feed RGB in 0..1, not normalised"
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class Source:
    """What is exported: the network with its weights, the checkpoint it came from (the file, its
    normalisation and class names), the network's name (the one built: a --model typed names it), and TTA."""

    network: nn.Module
    ckpt: Checkpoint
    path: Path
    name: str
    tta: bool


@dataclass(frozen=True)
class CheckImages:
    """The real images an export is checked on: uint8 N x 32 x 32 x 3 RGB, where they come from ("test" or
    "examples"), the noun for one of them, and the line that says so."""

    pixels: np.ndarray
    source: str
    noun: str
    description: str


@dataclass(frozen=True)
class Verification:
    """The exported file against the network in torch, on every image: how many got the same class, the
    largest |logit difference| and the limit it must stay under (0: the logits must be identical), and the
    batch sizes the file ran (more than one: the batch dimension is not fixed)."""

    runtime: str
    images: int
    noun: str
    agreeing: int
    max_difference: float
    limit: float
    batch_sizes: tuple[int, ...]

    @property
    def passed(self) -> bool:
        close = self.max_difference < self.limit if self.limit else self.max_difference == 0
        return self.agreeing == self.images and close

    def line(self) -> str:
        limit = f"limit {self.limit:.0e}" if self.limit else "identical required"
        difference = f"{self.max_difference:.1e}" if self.max_difference else "0"
        return (f"checked in {self.runtime} on {counted(self.images, self.noun)}: the same class for "
                f"{self.agreeing:,} of {self.images:,}, max |logit difference| {difference} ({limit})")


@dataclass(frozen=True)
class Exported:
    """A file written and checked: where, in which format, its size, what it takes and gives, its check."""

    path: Path
    format: str
    bytes: int
    input: dict[str, Any]
    output: dict[str, Any]
    exporter: str
    verification: Verification

    def to_dict(self) -> dict[str, Any]:
        check = self.verification
        return {"out": str(self.path), "format": self.format, "bytes": self.bytes, "exporter": self.exporter,
                "input": self.input, "output": self.output, "checked_in": check.runtime, "images_checked": check.images,
                "agreeing": check.agreeing, "max_abs_logit_difference": check.max_difference,
                "limit": check.limit, "batch_sizes": list(check.batch_sizes), "tta": self.output["tta"]}


class Normalised(nn.Module):
    """The network as the ONNX file holds it: RGB in 0..1 in, normalised as the checkpoint says, logits out
    (averaged with the mirror image's under TTA, as `cifar predict` does: evaluation.logits_of)."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], tta: bool):
        super().__init__()
        self.network, self.tta = network, tta
        self.register_buffer("scale", torch.tensor([1.0 / s for s in std]).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.network, images * self.scale - self.shift, self.tta)


def check_target(path: Path | None, file_format: str, overwrite: bool) -> Path:
    """The file to write (None: model.onnx, or model.pt), checked before any work: a name that says its
    format, not a link or folder, not an existing file unless `overwrite`; ONNX needs the [export] extra."""
    path = Path(path).expanduser() if path is not None else Path(f"model{SUFFIXES[file_format][0]}")
    if path.suffix.lower() not in SUFFIXES[file_format]:
        raise CifarError(f"--out {path} must end in {' or '.join(SUFFIXES[file_format])}: that is the format "
                         f"written (--format {file_format})")
    refuse_unless_ours(path, "--out")
    if path.exists() and not overwrite:
        raise CifarError(f"{path} exists; pass --overwrite to replace it")
    if file_format == "onnx":
        require("export", "cifar export")
    return path


def images_to_check(data_dir: Path, count: int, download: bool) -> CheckImages:
    """The first `count` images of the official test set when it is in `data_dir` (or `download` fetches
    it), else the example pictures shipped in the package: real images either way."""
    if download or (dataset_folder(data_dir) / TEST_BATCHES[0]).is_file():
        split = load_split(data_dir, train=False, download_missing=download)
        n = min(count, len(split))
        return CheckImages(split.images[:n], "test", "test image",
                           f"checking the export on the first {counted(n, 'test image')} of {dataset_folder(data_dir)}")
    _, pixels, unreadable = load_images(example_pictures())
    if pixels is None or unreadable:
        raise CifarError(f"the example pictures shipped with cifar-cli cannot be read ({unreadable[0][1]}); "
                         "reinstall it, or pass --data-dir with the CIFAR-10 test set")
    n = min(count, len(pixels))
    return CheckImages(pixels[:n], "examples", "example picture",
                       f"the CIFAR-10 test set is not in {data_dir} (--download fetches it): checking the export "
                       f"on the {counted(n, 'example picture')} shipped with cifar-cli")


def export_network(source: Source, out: Path, file_format: str, check: CheckImages) -> Exported:
    """Write the network (fp32, on the CPU, eval mode) to `out` in `file_format`, checked on `check` first; a
    file that fails the check is not written, and the reason is one line."""
    source.network.to(_CPU).float().eval()
    ckpt = source.ckpt
    if file_format == "onnx":
        raw, verification = _onnx_file(source, check)
        shapes = {"input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 3, 32, 32],
                            "range": "RGB, 0..1 (pixel / 255)", "normalization": NORMALIZATION,
                            "mean": list(ckpt.mean), "std": list(ckpt.std)},
                  "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(ckpt.classes)],
                             "classes": list(ckpt.classes), "tta": source.tta}, "exporter": EXPORTER}
    else:
        raw, verification = _state_dict_file(source, check)
        shapes = {"input": {"dtype": "float32", "shape": ["N", 3, 32, 32], "normalization":
                            "(pixel / 255 - mean) / std per channel, applied by the caller",
                            "mean": list(ckpt.mean), "std": list(ckpt.std)},
                  "output": {"dtype": "float32", "shape": ["N", len(ckpt.classes)], "classes": list(ckpt.classes),
                             "tta": False}, "exporter": "torch.save"}
    if not verification.passed:
        raise CifarError(f"the exported file does not compute what the network does, so it was not written: "
                         f"{verification.line()}")
    write_atomic(out, raw)
    return Exported(out, file_format, len(raw), **shapes, verification=verification)


def onnx_metadata(source: Source) -> dict[str, str]:
    """The ONNX file's metadata_props: everything a consumer needs besides the file (all text, per the format)."""
    ckpt = source.ckpt
    return {
        "classes": json.dumps(list(ckpt.classes)),
        "input": f"{INPUT_NAME}: float32 N x 3 x 32 x 32, RGB, values 0..1 (pixel / 255), any N",
        "output": f"{OUTPUT_NAME}: float32 N x {len(ckpt.classes)}, in the order of classes; softmax gives "
                  "probabilities",
        "mean": json.dumps(list(ckpt.mean)),
        "std": json.dumps(list(ckpt.std)),
        "normalization": NORMALIZATION,
        "tta": "flip: each image's logits averaged with its mirror image's" if source.tta else "none",
        "network": source.name,
        "checkpoint": source.path.name,
        "epoch": str(ckpt.epoch),
        "exporter": f"{EXPORTER}, torch {torch.__version__}",
        "cifar_cli_version": __version__,
    }


def _onnx_file(source: Source, check: CheckImages) -> tuple[bytes, Verification]:
    """The ONNX file's bytes, its metadata in, and their check in onnxruntime against the network in torch."""
    import onnxruntime

    ckpt = source.ckpt
    model = _trace(Normalised(source.network, ckpt.mean, ckpt.std, source.tta).eval(), source.name)
    for key, value in onnx_metadata(source).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    raw = model.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would go to the terminal behind Python's back
    try:
        session = onnxruntime.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise CifarError(f"onnxruntime cannot load the exported model: {_first_line(e)}") from None

    def in_onnxruntime(pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
        try:
            return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        except Exception as e:
            raise CifarError(f"onnxruntime cannot run the exported model on a batch of {len(pixels)}: "
                             f"{_first_line(e)}") from None

    return raw, _compare(_in_torch(source.network, ckpt, source.tta), in_onnxruntime, check, "onnxruntime",
                         ONNX_LIMIT)


def _state_dict_file(source: Source, check: CheckImages) -> tuple[bytes, Verification]:
    """The state_dict file's bytes, checked by loading them (weights_only) into a copy of the network whose
    own weights were zeroed first: identical logits mean the file holds all the network computes with."""
    network, buffer = source.network, io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in network.state_dict().items()}, buffer)
    raw = buffer.getvalue()
    try:
        reloaded = copy.deepcopy(network)
    except Exception as e:  # a user's network may hold what cannot be copied
        raise CifarError(f"cannot check the state_dict: the network cannot be copied ({_first_line(e)})") from None
    with torch.no_grad():
        for tensor in reloaded.state_dict().values():
            tensor.zero_()
    reloaded.load_state_dict(torch.load(io.BytesIO(raw), map_location=_CPU, weights_only=True), strict=True)
    return raw, _compare(_in_torch(network, source.ckpt, False), _in_torch(reloaded, source.ckpt, False), check,
                         "torch (reloaded from the file)", 0.0)


def _in_torch(network: nn.Module, ckpt: Checkpoint, tta: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The network's logits as `cifar predict` computes them (uint8 pixels normalised, TTA as asked)."""
    def run(pixels: np.ndarray) -> np.ndarray:
        chunk = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
        with torch.no_grad():
            return logits_of(network, to_device(chunk, _CPU, ckpt.mean, ckpt.std), tta).numpy()

    return run


def _compare(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
             check: CheckImages, runtime: str, limit: float) -> Verification:
    """Both on every image, in batches of CHECK_BATCH, then the first image alone (a second batch size): an
    image agrees when every run of it gives torch's class."""
    pixels = check.pixels
    batches = [(start, pixels[start:start + CHECK_BATCH]) for start in range(0, len(pixels), CHECK_BATCH)]
    same = np.ones(len(pixels), dtype=bool)
    worst, sizes = 0.0, []
    for start, batch in [*batches, (0, pixels[:1])]:
        want, got = reference(batch), candidate(batch)
        if got.shape != want.shape:
            raise CifarError(f"the exported file gives logits of shape {tuple(got.shape)} for a batch of "
                             f"{len(batch)}; the network gives {tuple(want.shape)}")
        difference = float(np.abs(got - want).max())
        worst = difference if not np.isfinite(difference) else max(worst, difference)
        same[start:start + len(batch)] &= got.argmax(1) == want.argmax(1)
        sizes.append(len(batch))
    return Verification(runtime, len(pixels), check.noun, int(same.sum()), worst, limit, tuple(sizes))


def _trace(wrapper: nn.Module, name: str) -> Any:
    """The ONNX model (onnx.ModelProto) torch's exporter makes of `wrapper`, with a dynamic batch dimension;
    its chatter kept off the terminal, its failure one line."""
    example = torch.rand(TRACE_BATCH, 3, 32, 32)
    try:
        with _quiet():
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, external_data=False, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # the exporter and the user's network may raise anything
        raise CifarError(f"cannot export {name} to ONNX: {_export_failure(e)}") from None
    return program.model_proto


def _export_failure(e: BaseException) -> str:
    """What failed, in one line: the exporter's own first sentence, the error beneath it, and the line of the
    network's code that raised it, where the exporter names one (its advice and graph dumps left out)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    said = (text.strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")
    cause = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is not e:
        said += f" ({type(cause).__name__}: {_first_line(cause)})"
    if where := re.search(r'raised this error:\s*File "([^"]+)", line (\d+), in \w+\s*\n\s*(.+)', text):
        said += f" at {Path(where.group(1)).name} line {where.group(2)}: {where.group(3).strip()}"
    return said


def _first_line(e: BaseException) -> str:
    lines = [" ".join(line.split()) for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


class _Discard(io.StringIO):
    """A stream that keeps nothing, standing in for stdout or stderr while the exporter runs. Rich's consoles
    look through it (rich_proxied_file) to the stream beneath, so a spinner keeps drawing."""

    def __init__(self, beneath: Any):
        super().__init__()
        self.rich_proxied_file = getattr(beneath, "rich_proxied_file", beneath)

    def write(self, text: str) -> int:
        return len(text)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx's progress lines (stdout: they would break --json), torch's log records, its warnings and
    torch.fx's dump of a graph that failed (stderr) are the exporter talking to its developers; a failure is
    said in one line instead (_export_failure)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Discard(sys.stdout)), \
                contextlib.redirect_stderr(_Discard(sys.stderr)):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)

