"""The commands that use a checkpoint as it is: eval, predict, convert, export."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel

from cifar_cli.cli.options import (
    CheckpointArg,
    CheckpointOptions,
    CheckpointPath,
    Json,
    ModelOption,
    counted,
    error,
    fails_cleanly,
    helped,
    long_step,
    note,
    out,
    print_json,
    runs_checkpoint,
    say,
)
from cifar_cli.errors import CifarError
from cifar_cli.settings import EVAL_BATCH_SIZE
from cifar_cli.terminal import literal


class ExportFormat(str, Enum):
    onnx = "onnx"
    state_dict = "state_dict"


class EvalImages(str, Enum):
    test = "test"
    train = "train"
    held_out = "held-out"


@fails_cleanly
@runs_checkpoint()
def eval_command(
    checkpoint: Annotated[Path | None, typer.Argument(
        help=helped("A .safetensors checkpoint written by cifar train, or its run folder (its best.safetensors; "
                    "with --images train or held-out, its last.safetensors).", "the one shipped with cifar-cli"),
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, show_default=False,
        help=helped("Images per forward pass; changes speed, not results.", f"{EVAL_BATCH_SIZE}; 2048 on CUDA"))
    ] = None,
    images: Annotated[EvalImages, typer.Option(
        "--images", help="The test set; the training images it learned from, without augmentation (how closely "
                         "the network fits them, next to how well it generalises); or the images a --val-split "
                         "run held out (from its last.safetensors).")
    ] = EvalImages.test,
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", dir_okay=False, show_default=False,
        help="Also draw the confusion matrix (counts, class names) as a PNG here, e.g. confusion.png.")] = None,
    as_json: Json = False,
    *,
    options: CheckpointOptions,
) -> None:
    """Loss, accuracy, per-class results and the confusion matrix of a checkpoint on the test set
    (with --images train: on the training images it learned from, un-augmented; --images held-out: on
    those its --val-split run held out).

    A checkpoint of a preset rebuilds its network from the file alone; one of your own network needs
    --model FILE.py:NAME again (a checkpoint is never a reason to import code), unless it is a file you
    trained here and have not changed since.
    """
    from cifar_cli.files import check_output
    from cifar_cli.report import confusion_table, per_class_table, write_confusion_matrix
    from cifar_cli.run_folder import JUDGE, RUN_RECORD
    from cifar_cli.run_plan import images_to_judge
    from cifar_cli.runtime import Runtime
    from cifar_cli.training.evaluation import evaluate

    out_file = check_output(out_file, ".png", "--out") if out_file is not None else None
    run = options.load(checkpoint, JUDGE if images is EvalImages.test else RUN_RECORD)
    with long_step("reading the CIFAR-10 images", as_json=as_json):
        split = images_to_judge(run.ckpt, images.value, options.data_root, options.download)
    with long_step(f"judging {images.value} images", len(split), as_json) as progress:
        result = evaluate(run.network, split, run.device, batch_size=batch_size, classes=run.ckpt.classes,
                          mean=run.ckpt.mean, std=run.ckpt.std, tta=run.tta, name=str(run.path), progress=progress,
                          amp_dtype=Runtime().amp_dtype(run.device))
    if out_file is not None:
        write_confusion_matrix(result, out_file, f"{run.path.name}: {len(split):,} {images.value} images, "
                               f"accuracy {100 * result.accuracy:.2f}%")
    if as_json:
        print_json({"checkpoint": str(run.path), "epoch": run.ckpt.epoch, "images": len(split),
                    "images_from": images.value, "tta": run.tta, "out": str(out_file) if out_file else None,
                    **result.to_dict()})
        return
    out.print(Panel.fit(f"{literal(run.path)}  ({literal(run.ckpt.model.describe())}, epoch {run.ckpt.epoch}, "
                        f"cifar-cli {literal(run.ckpt.version)})\n"
                        f"{images.value} images {len(split):,}{' + mirror images' if run.tta else ''}   "
                        f"loss [bold]{result.loss:.4f}[/]   "
                        f"accuracy [bold]{100 * result.accuracy:.2f}%[/]"))
    out.print(per_class_table(result))
    out.print(confusion_table(result))
    if out_file is not None:
        out.print(f"Wrote the confusion matrix to [bold]{literal(out_file)}[/]", soft_wrap=True)


@fails_cleanly
@runs_checkpoint(data=False)
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...); each is resized to 32x32.",
                                                 dir_okay=False, show_default=False)],
    checkpoint: CheckpointPath = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="How many classes to show per image.")] = 3,
    as_json: Json = False,
    *,
    options: CheckpointOptions,
) -> None:
    """The most likely classes of each image, with their probabilities.

    A picture that cannot be read is named on stderr and the others are still predicted; the exit code is
    then 1 (2 when none can be read).
    """
    from cifar_cli.pictures import load_images
    from cifar_cli.runtime import Runtime
    from cifar_cli.training.evaluation import predict as class_probabilities

    run = options.load(checkpoint)
    images, pixels, unreadable = load_images(images, noted=note)
    if pixels is None and len(unreadable) == 1:
        raise CifarError(unreadable[0][1])
    for _, why in unreadable:
        error(why)
    if pixels is None:
        raise CifarError(f"none of the {len(unreadable)} pictures can be read")
    probs = class_probabilities(run.network, pixels, run.device, run.ckpt.mean, run.ckpt.std, tta=run.tta,
                                amp_dtype=Runtime().amp_dtype(run.device))
    best = probs.topk(min(top, probs.shape[1]), dim=1)
    results = [{"image": str(p), "top": [{"class": run.ckpt.classes[i], "probability": float(v)}
                                          for v, i in zip(values.tolist(), indices.tolist())]}
               for p, values, indices in zip(images, best.values, best.indices)]
    if as_json:
        print_json({"checkpoint": str(run.path), "predictions": results,
                    "unreadable": [{"image": str(p), "error": why} for p, why in unreadable]})
    else:
        for r in results:
            guesses = "   ".join(f"{literal(t['class'])} [bold]{100 * t['probability']:.1f}%[/]" for t in r["top"])
            out.print(f"{literal(r['image'])}: {guesses}", soft_wrap=True)
    if unreadable:
        raise typer.Exit(1)


@fails_cleanly
def convert(
    source: Annotated[Path, typer.Argument(help="A PyTorch .pt/.pth file holding this network's state_dict.",
                                           dir_okay=False, show_default=False)],
    target: Annotated[Path, typer.Argument(help="The .safetensors checkpoint to write.", dir_okay=False,
                                           show_default=False)],
    model: ModelOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace TARGET if it exists.")] = False,
) -> None:
    """Convert a PyTorch .pt/.pth state_dict of a network (--model) to a .safetensors checkpoint, safely.

    The file is read with torch.load(weights_only=True), which refuses pickles that would run code.
    """
    from cifar_cli.convert import convert_pytorch_checkpoint
    from cifar_cli.files import check_output
    from cifar_cli.models import choose_network

    target = check_output(target, ".safetensors", "target")
    if target.exists() and not overwrite and target.resolve() != source.expanduser().resolve():
        raise CifarError(f"{target} exists; pass --overwrite to replace it")
    ckpt = convert_pytorch_checkpoint(source, target, choose_network(model))
    out.print(f"Wrote {literal(target)} ({counted(len(ckpt.model_state), 'tensor')}, "
              f"{literal(ckpt.model.describe())})", soft_wrap=True)


@fails_cleanly
@runs_checkpoint(device=False)
def export(
    checkpoint: CheckpointArg = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", dir_okay=False, show_default=False,
        help=helped("The file to write: .onnx, or .pt for --format state_dict.",
                    "model.onnx; model.pt for --format state_dict"))] = None,
    file_format: Annotated[ExportFormat, typer.Option(
        "--format", help=helped("onnx: normalisation and TTA inside, RGB in 0..1 in, logits out, class names in "
                                "its metadata (needs the [export] extra); state_dict: the network's weights under "
                                "its own names, for torch.load(weights_only=True) into your own class."))
    ] = ExportFormat.onnx,
    images: Annotated[int, typer.Option(
        "--images", min=2, help="How many of the test set's first images the file is checked on before it is "
                                "written (the 10 example pictures shipped with cifar-cli where the test set is "
                                "not in --data-dir).")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    as_json: Json = False,
    *,
    options: CheckpointOptions,
) -> None:
    """Export a checkpoint's network for use without cifar-cli: an ONNX model (torch.onnx's dynamo exporter,
    any batch size) or a PyTorch state_dict, in float32, exported on the CPU.

    The file is checked before it is written: the network in torch and the file (in onnxruntime, or reloaded
    into the network) on real images, the same class for every image and logits within 1e-4 (the state_dict:
    identical). A file that fails is not written, and the command exits 2.
    """
    from cifar_cli.export import Source, check_target, export_network, images_to_check

    out_file = check_target(out_file, file_format.value, overwrite)
    run = options.load(checkpoint)
    with long_step("reading the images to check the export on", as_json=as_json):
        check = images_to_check(options.data_root, images, options.download)
    say(check.description)
    step = ("exporting with torch.onnx, then checking it in onnxruntime" if file_format is ExportFormat.onnx
            else "saving the state_dict, then checking it reloaded")
    with long_step(step, as_json=as_json):
        exported = export_network(Source(run.network, run.ckpt, run.path, run.spec.describe(), run.tta), out_file,
                                  file_format.value, check)
    if as_json:
        print_json({"checkpoint": str(run.path), **exported.to_dict(), "images_from": check.source})
        return
    out.print(literal(exported.verification.line()), soft_wrap=True)
    out.print(f"Wrote [bold]{literal(out_file)}[/] ({exported.bytes:,} bytes, {file_format.value}, "
              f"{literal(run.spec.describe())})", soft_wrap=True)
