"""What a network gets wrong and why, and the lr to train it at: mistakes, gradcam, lr-find."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cifar_cli.cli.completion import complete_class, complete_layer
from cifar_cli.cli.options import (
    CheckpointArg,
    CheckpointOptions,
    CheckpointPath,
    DataDir,
    Device,
    DeviceName,
    Download,
    Json,
    ModelOption,
    PngOut,
    counted,
    err,
    fails_cleanly,
    helped,
    long_step,
    note,
    out,
    print_json,
    read_split,
    runs_checkpoint,
    setting_option,
)
from cifar_cli.errors import CifarError
from cifar_cli.settings import DEFAULTS
from cifar_cli.terminal import literal


@fails_cleanly
@runs_checkpoint()
def mistakes(
    checkpoint: CheckpointArg = None,
    out_file: PngOut = Path("mistakes.png"),
    count: Annotated[int, typer.Option("--count", "-n", help="Mistakes to show, most confident first.")] = 25,
    class_name: Annotated[str | None, typer.Option(
        "--class", help=helped("Only images of this true class.", "all classes"), show_default=False,
        autocompletion=complete_class)] = None,
    as_json: Json = False,
    *,
    options: CheckpointOptions,
) -> None:
    """A grid of misclassified test images, the most confident mistakes first, and the common confusions."""
    from cifar_cli.explain import class_named, common_confusions, find_mistakes
    from cifar_cli.files import check_output
    from cifar_cli.report import write_mistakes_grid

    out_file = check_output(out_file, ".png", "--out")
    if count < 1:
        raise CifarError(f"-n must be at least 1, not {count}")
    run = options.load(checkpoint)
    split = read_split(options.data_dir, False, options.download, as_json)
    if class_name is not None:
        class_name = class_named(class_name, run.ckpt.classes)
    with long_step("finding the mistakes", len(split), as_json) as progress:
        found = find_mistakes(run.network, split, run.device, run.ckpt.mean, run.ckpt.std, tta=run.tta,
                              progress=progress)
    shown = [m for m in found if class_name is None or run.ckpt.classes[m.true] == class_name][:count]
    name = run.ckpt.classes.__getitem__
    titles = [f"{name(m.true)} -> {name(m.predicted)} ({100 * m.probability:.0f}%)" for m in shown]
    if shown:
        write_mistakes_grid(split.images[[m.index for m in shown]], titles, out_file, f"{len(shown)} of "
                            f"{counted(len(found), 'mistake')} on {counted(len(split), 'test image')}, "
                            "most confident first\n"
                            "each titled: true class -> predicted class (the network's confidence)")
    confusions = [{"true": name(t), "predicted": name(p), "count": n} for t, p, n in common_confusions(found)]
    if as_json:
        print_json({"checkpoint": str(run.path), "out": str(out_file) if shown else None, "images": len(split),
                    "mistakes": len(found),
                    "tta": run.tta, "shown": [{"index": m.index, "true": name(m.true), "predicted": name(m.predicted),
                                               "probability": m.probability} for m in shown],
                    "confusions": confusions})
        return
    wrote = f"; wrote the {len(shown)} most confident to [bold]{literal(out_file)}[/]" if shown else ": no picture"
    out.print(f"{len(found):,} of {counted(len(split), 'test image')} misclassified{wrote}", soft_wrap=True)
    out.print("Most common confusions:")
    for c in confusions:
        out.print(f"  {literal(c['true'])} -> {literal(c['predicted'])}: {c['count']}")


class CamTarget(str, Enum):
    predicted = "predicted"
    true = "true"


@fails_cleanly
@runs_checkpoint(tta=False)
def gradcam(
    images: Annotated[list[Path] | None, typer.Argument(
        help="Picture files to explain (or use --mistakes).", dir_okay=False, show_default=False)] = None,
    checkpoint: CheckpointPath = None,
    from_mistakes: Annotated[int | None, typer.Option(
        "--mistakes", help="Explain this many misclassified test images, most confident first.",
        show_default=False)] = None,
    out_file: PngOut = Path("gradcam.png"),
    layer: Annotated[str | None, typer.Option(
        "--layer", help=helped("The layer to explain, by name (cifar receptive-field shows them).",
                               "the last convolution with an output of 8x8 or more"), show_default=False,
        autocompletion=complete_layer)] = None,
    opacity: Annotated[float, typer.Option("--opacity", min=0.0, max=1.0, help="Of the heat map over the image.")
                       ] = 0.5,
    target: Annotated[CamTarget, typer.Option("--target", help="Explain the predicted class or the true one.")
                      ] = CamTarget.predicted,
    as_json: Json = False,
    *,
    options: CheckpointOptions,
) -> None:
    """Grad-CAM: where in each image the network looked for its answer (image, heat map, overlay)."""
    from cifar_cli.explain import MIN_CAM_SIZE, cam_inputs, cam_layer
    from cifar_cli.explain import gradcam as cam_maps
    from cifar_cli.files import check_output
    from cifar_cli.report import write_gradcam_sheet

    out_file = check_output(out_file, ".png", "--out")
    run = options.load(checkpoint)
    with long_step("finding the mistakes on the test images" if not images else "reading the pictures",
                   as_json=as_json) as progress:
        cam = cam_inputs(images, from_mistakes, target.value, run.network, run.ckpt, run.device, options.data_root,
                         options.download, progress, note)
    layer, size = cam_layer(run.network, layer)
    if min(size) < MIN_CAM_SIZE:
        err.print(f"warning: {literal(layer)} is {size[0]}x{size[1]}; a heat map from so few cells says little "
                  "about where the network looked", soft_wrap=True)
    maps = cam_maps(run.network, cam.pixels, layer, cam.targets, run.device, run.ckpt.mean, run.ckpt.std)
    write_gradcam_sheet(cam.pixels, maps, cam.titles, out_file,
                        f"Grad-CAM of layer {layer} ({size[0]}x{size[1]}), for the {target.value} class", opacity)
    if as_json:
        print_json({"checkpoint": str(run.path), "out": str(out_file), "layer": layer, "layer_size": list(size),
                    "target": target.value, "images": cam.rows})
        return
    out.print(f"Wrote Grad-CAM of {counted(len(cam.rows), 'image')} from layer {literal(layer)} ({size[0]}x{size[1]}) "
              f"to [bold]{literal(out_file)}[/]", soft_wrap=True)


@fails_cleanly
def lr_find(
    model: ModelOption = None,
    out_file: PngOut = Path("lr.png"),
    start: Annotated[float, typer.Option("--start", help="The first learning rate.")] = 1e-5,
    end: Annotated[float, typer.Option("--end", help="The last learning rate.")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", help="Mini-batches; bounds the time it takes.")] = 200,
    batch_size: setting_option("batch_size", "--batch-size", "Images per step.") = None,
    seed: setting_option("seed", "--seed", "Random seed.") = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = DeviceName.auto,
    as_json: Json = False,
) -> None:
    """Learning-rate range test: train from fresh weights with the lr growing each mini-batch, plot the loss,
    and suggest the one-cycle peak (--lr). Touches no run folder."""
    from cifar_cli.files import check_output
    from cifar_cli.models import choose_network
    from cifar_cli.report import write_lr_plot
    from cifar_cli.runtime import resolve_device
    from cifar_cli.training.lr_find import check_lr_range, lr_range_test

    out_file = check_output(out_file, ".png", "--out")
    check_lr_range(start, end, steps)
    settings = DEFAULTS.with_options(batch_size=batch_size, seed=seed)
    settings.validate()
    torch_device = resolve_device(DeviceName(device).value)
    split = read_split(data_dir, True, download, as_json)
    console = err if as_json else out
    console.print(f"Range test: lr {start:g} -> {end:g} over at most {steps} mini-batches of {settings.batch_size}")
    network = choose_network(model, seed=settings.seed)  # built as the range test's trainer will build it
    with long_step("range test", steps, as_json) as progress:
        finding = lr_range_test(settings, network, split, torch_device, start, end, steps, progress=progress)
    write_lr_plot(finding, out_file, DEFAULTS.lr)
    if as_json:
        print_json({"out": str(out_file), "suggestion": finding.suggestion, "lowest_loss_lr": finding.lowest,
                    "diverged_at": finding.diverged_at, "how": finding.how, "default_lr": DEFAULTS.lr,
                    "lrs": finding.lrs, "losses": finding.losses, "smoothed": finding.smoothed})
        return
    stop = f"; the loss exploded at lr {finding.diverged_at:.3g}" if finding.diverged_at else ""
    said = (f"No suggested peak lr: {finding.how}" if finding.suggestion is None
            else f"Suggested peak lr: [bold]{finding.suggestion:.3g}[/] ({finding.how}){stop}")
    out.print(f"{said}. The default --lr is {DEFAULTS.lr:g}. Wrote [bold]{literal(out_file)}[/]", soft_wrap=True)
