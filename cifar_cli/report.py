"""How results look: rich tables for the terminal, PNG pictures, torchinfo's layer table."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table
from torch import nn

from cifar_cli.errors import CifarError
from cifar_cli.files import write_atomic
from cifar_cli.receptive_field import RFLayer
from cifar_cli.records import EpochRecord, EvalResult, chosen_epoch, headline
from cifar_cli.rules import Rule
from cifar_cli.terminal import literal, visible


def layer_summary(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> tuple[str, list[dict]]:
    """torchinfo's table (as plain text, to print without markup) and the same layers as data."""
    from torchinfo import summary

    try:
        stats = summary(model, input_size=(1, *input_size), col_names=("output_size", "num_params", "kernel_size"),
                        depth=16, verbose=0, row_settings=("var_names",), col_width=18, device="cpu")
    except RuntimeError as e:  # torchinfo wraps what the forward pass raised, our one-line errors included
        if isinstance(e.__cause__, CifarError):
            raise e.__cause__ from None
        raise
    layers = [
        {"name": info.get_layer_name(show_var_name=True, show_depth=False), "type": info.class_name,
         "depth": info.depth, "output_shape": list(info.output_size),
         "params": info.num_params if info.is_leaf_layer else 0,
         "kernel": _kernel(info.kernel_size)}
        for info in stats.summary_list
    ]
    for info in stats.summary_list:  # names are the user's: one row each, control characters shown
        info.class_name, info.var_name = visible(info.class_name), visible(info.var_name)
    # torchinfo prints its unit enum ("Total mult-adds (Units.MEGABYTES): 15.14"); say it as people do.
    text = re.sub(r"^Total mult-adds.*$", f"Total mult-adds: {stats.total_mult_adds / 1e6:.2f} M", str(stats),
                  flags=re.MULTILINE)
    return text, layers


def _kernel(size: object) -> list[int] | None:
    if not size:
        return None
    return [size, size] if isinstance(size, int) else list(size)


def rules_table(rules: list[Rule]) -> Table:
    table = Table(title="Design rules", title_justify="left")
    table.add_column("rule")
    table.add_column("result")
    table.add_column("measured")
    for r in rules:
        table.add_row(r.name, "[green]pass[/]" if r.passed else "[bold red]FAIL[/]", literal(r.figure))
    return table


def presets_table(rows: list[dict]) -> Table:
    """`cifar models`: one row per preset."""
    table = Table(title="Built-in networks (--model NAME)", title_justify="left")
    for col in ("name", "parameters", "RF", "rules", "description"):
        table.add_column(col, justify="right" if col in ("parameters", "RF") else "left")
    for r in rows:
        verdict = "[green]all pass[/]" if r["passed"] else "[bold red]fails:[/] " + literal(", ".join(r["failed"]))
        table.add_row(r["name"], f"{r['parameters']:,}", str(r["receptive_field"]), verdict, r["description"])
    return table


def receptive_field_table(rows: list[RFLayer]) -> Table:
    table = Table(title="Receptive field, layer by layer (input 32x32)", title_justify="left")
    for col in ("layer", "kind", "kernel", "stride", "dilation", "padding", "jump", "RF", "out"):
        widest = max((len(visible(getattr(r, "name" if col == "layer" else "kind"))) for r in rows), default=4)
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right",
                         no_wrap=col in ("layer", "kind"), min_width=widest if col in ("layer", "kind") else None)
    for r in rows:
        table.add_row(literal(r.name), literal(r.kind), str(r.kernel), str(r.stride), str(r.dilation), str(r.padding),
                      str(r.jump_in), str(r.rf), f"{r.out_size}x{r.out_size}")
    return table


def per_class_table(result: EvalResult) -> Table:
    table = Table(title="Per class (accuracy = recall)", title_justify="left")
    for col in ("class", "images", "correct", "accuracy", "precision"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in result.per_class:
        table.add_row(literal(row["class"]), str(row["count"]), str(row["correct"]),
                      f"{100 * row['accuracy']:.1f}%",
                      "[dim]—[/]" if row["precision"] is None else f"{100 * row['precision']:.1f}%")
    return table


def confusion_table(result: EvalResult) -> Table:
    table = Table(title="Confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    table.add_column("true \\ predicted")
    for j in range(len(result.classes)):  # numbered columns keep the matrix inside 80 columns
        table.add_column(str(j), justify="right")
    for i, row in enumerate(result.confusion):
        cells = [f"[bold]{v}[/]" if j == i else (str(v) if v else "[dim]0[/]") for j, v in enumerate(row)]
        table.add_row(f"{i} {literal(result.classes[i])}", *cells)
    return table


def epoch_line(r: EpochRecord, epochs: int) -> str:
    width = len(str(epochs))
    held = (f"held-out loss {r.held_out_loss:.4f} acc {100 * r.held_out_acc:5.2f}%  " if r.held_out_acc is not None
            else "")
    test = f"test loss {r.test_loss:.4f} acc {100 * r.test_acc:5.2f}%  " if r.test_acc is not None else ""
    return (f"epoch {r.epoch:>{width}}/{epochs}  train loss {r.train_loss:.4f} acc {100 * r.train_acc:5.2f}%  "
            f"{held}{test}lr {r.lr:.5f}  {r.seconds:.1f}s")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def write_image_grid(rows: list[tuple[str, np.ndarray, list[np.ndarray]]], path: Path, scale: int = 4) -> None:
    """One row per image: its label, the original, then its views; uint8 HWC images, upscaled crisply."""
    if not rows:
        raise CifarError("nothing to draw: no images")
    h, w = rows[0][1].shape[:2]
    cell_w, cell_h, pad, label_w, header = w * scale, h * scale, 6, 110, 22
    columns = 1 + max(len(views) for _, _, views in rows)
    canvas = Image.new("RGB", (label_w + columns * (cell_w + pad) + pad, header + len(rows) * (cell_h + pad) + pad),
                       "white")
    draw, font = ImageDraw.Draw(canvas), _font(13)
    draw.text((label_w + pad, 4), "original", fill="black", font=font)
    draw.text((label_w + 2 * pad + cell_w, 4), "augmented views (what train feeds the network)", fill="black",
              font=font)
    for r, (label, original, views) in enumerate(rows):
        y = header + pad + r * (cell_h + pad)
        draw.text((pad, y + cell_h // 2 - 8), label, fill="black", font=font)
        for c, image in enumerate([original, *views]):
            tile = Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (cell_w + pad), y))
    png = io.BytesIO()
    canvas.save(png, format="PNG")
    _write_png(path, png)


def write_training_curves(history: list[EpochRecord], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch (train / held-out / test) and the learning rate, side by side, as a PNG."""
    if not history:
        raise CifarError("nothing to draw: the history has no epochs")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [r.epoch for r in history]
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15.5, 4.2), dpi=110)
    series = {"train": ("train", "tab:blue"), "held_out": ("held-out", "tab:green"), "test": ("test", "tab:orange")}
    marker = "o" if len(history) <= 10 else None  # a line needs two epochs; a short run's points must show
    for prefix, (label, color) in series.items():
        losses = [getattr(r, f"{prefix}_loss") for r in history]
        if any(v is None for v in losses):
            continue
        style = {"label": label, "color": color, "marker": marker, "markersize": 4}
        loss_ax.plot(epochs, losses, **style)
        acc_ax.plot(epochs, [100 * getattr(r, f"{prefix}_acc") for r in history], **style)
    summed = headline(history)  # test accuracy, or held-out where the run left the test set out
    color = series[summed.key.removesuffix("_acc")][1]
    final, best = history[-1], chosen_epoch(history)
    final_acc = 100 * summed.of(final)
    acc_ax.axhline(final_acc, color=color, linestyle=":", linewidth=1)
    acc_ax.annotate(f"final {summed.name} {final_acc:.2f}%", (final.epoch, final_acc),
                    textcoords="offset points", xytext=(-8, -14), ha="right", fontsize=9)
    loss_ax.set(xlabel="epoch", ylabel="loss (train: with label smoothing)", title="Loss")
    chosen = (f"best held-out {100 * best.held_out_acc:.2f}%, epoch {best.epoch}" if final.held_out_acc is not None
              else "no held-out images: the result is the last epoch")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"Accuracy ({chosen})")
    low = min(100 * min(r.train_acc, summed.of(r)) for r in history[len(history) // 4:])
    acc_ax.set_ylim(max(0.0, low - 5), 100)
    _lr_panel(lr_ax, history, marker)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlim(epochs[0] - 1, epochs[-1] + 1)  # room for whole-epoch ticks, even around a single epoch
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _lr_panel(ax: object, history: list[EpochRecord], marker: str | None) -> None:
    """The one-cycle schedule as the run went: the learning rate each epoch ended at."""
    ax.plot([r.epoch for r in history], [r.lr for r in history], label="lr at the end of each epoch",
            color="tab:purple", marker=marker, markersize=4)
    ax.set(xlabel="epoch", ylabel="learning rate", title=f"Learning rate (peak seen {max(r.lr for r in history):.3g})")
    ax.set_ylim(bottom=0)


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: object, path: Path) -> None:
    plt = _pyplot()
    try:
        png = io.BytesIO()
        fig.savefig(png, format="png")
        _write_png(path, png)
    except ValueError as e:  # matplotlib's word for a picture it cannot draw
        raise CifarError(f"cannot write {path}: {e}") from None
    finally:
        plt.close(fig)


def _write_png(path: Path, png: io.BytesIO) -> None:
    """Every picture is written here: atomically, and never through a link (files.write_atomic)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), png.getvalue())
    except OSError as e:
        raise CifarError(f"cannot write {path}: {e.strerror or e}") from None


def write_mistakes_grid(images: np.ndarray, titles: list[str], path: Path, heading: str) -> None:
    """A grid of uint8 images, each under its title, pixels kept crisp (nearest-neighbour)."""
    if not len(images):
        raise CifarError("nothing to draw: no mistakes")
    plt = _pyplot()
    cols = min(5, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows + 0.5), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=8.5)
    fig.suptitle(heading, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def cam_overlay(image: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """A heat map (H x W in 0..1) in the jet colours laid over a uint8 H x W x 3 picture: float RGB in 0..1."""
    from matplotlib import colormaps

    return (1 - opacity) * image / 255.0 + opacity * colormaps["jet"](heat)[..., :3]


def write_gradcam_sheet(images: np.ndarray, maps: np.ndarray, titles: list[str], path: Path, heading: str,
                        opacity: float = 0.5) -> None:
    """Per image: the image, its Grad-CAM heat map, and the map laid over the image (two sets a row
    when there are more than four images, so the sheet stays readable on one screen)."""
    plt = _pyplot()

    sets = 2 if len(images) > 4 else 1
    rows = -(-len(images) // sets)
    fig, axes = plt.subplots(rows, 3 * sets, figsize=(3.4 * 3 * sets / 1.5, 2.3 * rows + 0.6), dpi=110,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, heat, title) in enumerate(zip(images, maps, titles)):
        row, first = i // sets, 3 * (i % sets)
        overlay = cam_overlay(image, heat, opacity)
        panels = ((image, "nearest", None), (heat, "bilinear", "jet"), (overlay, "bilinear", None))
        for k, (picture, interpolation, cmap) in enumerate(panels):
            ax = axes[row][first + k]
            ax.imshow(picture, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None,
                      interpolation=interpolation)
            ax.set_title(title if k == 0 else ("Grad-CAM" if k == 1 else "overlay"), fontsize=8)
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def write_lr_plot(finding: object, path: Path, current_lr: float) -> None:
    """Loss against learning rate (log scale), smoothed, with the suggestion and the current default marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    ax.plot(finding.lrs, finding.losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss per mini-batch")
    ax.plot(finding.lrs, finding.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if finding.suggestion is not None:  # a curve with no falling stretch suggests nothing
        ax.axvline(finding.suggestion, color="tab:green", linestyle="--",
                   label=f"suggested peak lr {finding.suggestion:.3g}")
    ax.axvline(finding.lowest, color="tab:gray", linestyle=":", label=f"lowest loss at lr {finding.lowest:.3g}")
    ax.axvline(current_lr, color="tab:orange", linestyle="-.", label=f"--lr default {current_lr:g}")
    if finding.diverged_at is not None:
        ax.axvline(finding.diverged_at, color="tab:red", linewidth=1,
                   label=f"loss exploded at {finding.diverged_at:.3g}")
    finite = [v for v in finding.smoothed if np.isfinite(v)]
    ax.set_ylim(min(finite) - 0.1, min(max(finite), 2.5 * finite[0]) + 0.1)
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss",
           title="Learning-rate range test: the loss as the lr grows each mini-batch")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def write_confusion_matrix(result: EvalResult, path: Path, heading: str) -> None:
    """The confusion matrix as a PNG file (confusion_figure)."""
    _save(confusion_figure(result, heading), path)


def confusion_image(result: EvalResult, heading: str) -> np.ndarray:
    """The confusion matrix as an RGB picture in memory (uint8 H x W x 3), drawn as confusion_figure draws it."""
    plt = _pyplot()
    fig = confusion_figure(result, heading)
    try:
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def confusion_figure(result: EvalResult, heading: str):  # noqa: ANN201 - a matplotlib figure
    """The confusion matrix as a picture: one cell per (true, predicted) pair with its count, shaded by the
    share of the true class's images it holds, class names on both axes."""
    plt = _pyplot()
    counts = np.array(result.confusion)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(result.classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.8 + 0.55 * n), dpi=110)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else ("black" if counts[i, j] else "0.6"))
    ax.set_xticks(range(n), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), result.classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=heading)
    fig.tight_layout()
    return fig
