"""Looking at networks and data without training: models, summary, receptive-field, augment-preview, plot."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cifar_cli.cli.options import (
    AffineP,
    CutoutP,
    DataDir,
    Download,
    Json,
    ModelOption,
    PngOut,
    Seed,
    ToneP,
    counted,
    data_dir_or_default,
    fails_cleanly,
    helped,
    note,
    out,
    print_json,
)
from cifar_cli.settings import DEFAULTS
from cifar_cli.terminal import literal


@fails_cleanly
def models_command(as_json: Json = False) -> None:
    """The built-in networks: parameters, receptive field and the design rules of each."""
    from cifar_cli.models import PRESETS, create_model, preset_spec
    from cifar_cli.receptive_field import total_receptive_field
    from cifar_cli.report import presets_table
    from cifar_cli.rules import check_rules, count_parameters

    rows = []
    for name, preset in PRESETS.items():
        model = create_model(preset_spec(name))
        rules = check_rules(model)
        rows.append({"name": name, "parameters": count_parameters(model),
                     "receptive_field": total_receptive_field(model), "passed": all(r.passed for r in rules),
                     "failed": [r.name for r in rules if not r.passed], "description": preset.description})
    if as_json:
        print_json({"models": rows})
    else:
        out.print(presets_table(rows))


def summary_help() -> str:
    from rich.markup import escape

    from cifar_cli.rulebook import RULES

    meanings = "\n\n".join(f"- {escape(rule.name)}: {escape(rule.meaning)}." for rule in RULES)
    return ("Layers, output shapes and parameter counts of the network, and a check of the design rules.\n\n"
            "Each rule is judged on what one forward pass computes, whether written as modules, F.* calls or "
            "tensor methods; a failing rule says how to fix it. Exits 1, naming each failing rule, when the "
            f"network breaks one. The rules (docs/rules.md has the details):\n\n{meanings}")


@fails_cleanly
def summary(model: ModelOption = None, as_json: Json = False) -> None:
    from cifar_cli.models import choose_network, create_model
    from cifar_cli.report import layer_summary, rules_table
    from cifar_cli.rules import check_rules, count_parameters

    spec = choose_network(model)
    network = create_model(spec)
    rules = check_rules(network)
    table, layers = layer_summary(network)
    failed = [r.name for r in rules if not r.passed]
    if as_json:
        print_json({"model": spec.to_dict(), "parameters": count_parameters(network), "layers": layers,
                    "rules": [asdict(r) for r in rules], "passed": not failed})
    else:
        out.print(literal(table, keep_lines=True), soft_wrap=True)
        out.print(rules_table(rules))
        out.print("[green]All rules pass.[/]" if not failed
                  else f"[bold red]Fails {counted(len(failed), 'rule')}:[/] {literal('; '.join(failed))}")
        for rule in rules:
            if not rule.passed:
                out.print(f"  [bold]fix[/] {literal(rule.name)}: {literal(rule.fix)}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@fails_cleanly
def receptive_field_command(model: ModelOption = None, as_json: Json = False) -> None:
    """Receptive field layer by layer, computed by walking the network's real modules."""
    from cifar_cli.models import choose_network, create_model
    from cifar_cli.receptive_field import receptive_field
    from cifar_cli.report import receptive_field_table

    found = receptive_field(create_model(choose_network(model)))
    if as_json:
        print_json({"layers": [asdict(r) for r in found.rows], "total": found.total})
    else:
        out.print(receptive_field_table(found.rows))
        out.print(f"Total receptive field: [bold]{found.total}[/] pixels (of a 32x32 image)")


@fails_cleanly
def augment_preview(
    out_file: PngOut = Path("augment-preview.png"),
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=64, help="Training images, one row each.")] = 8,
    views: Annotated[int, typer.Option("--views", "-k", min=1, max=32, help="Augmented views of each.")] = 6,
    image: Annotated[list[Path] | None, typer.Option(
        "--image", help="Use this picture instead of the dataset (repeatable).", dir_okay=False)] = None,
    seed: Seed = 0,
    affine_p: AffineP = None,
    cutout_p: CutoutP = None,
    tone_p: ToneP = None,
    data_dir: DataDir = None,
    download: Download = False,
    as_json: Json = False,
) -> None:
    """A PNG grid of real images and what the training pipeline makes of them (with train's odds, if given)."""
    import numpy as np

    from cifar_cli.augment import describe, preview, train_pipeline
    from cifar_cli.data import CLASSES, load_split
    from cifar_cli.files import check_output
    from cifar_cli.pictures import load_image
    from cifar_cli.report import write_image_grid

    settings = DEFAULTS.with_options(affine_p=affine_p, cutout_p=cutout_p, tone_p=tone_p)
    settings.validate()
    out_file = check_output(out_file, ".png", "--out")
    if image:
        images = np.stack([load_image(p, noted=note) for p in image])
        labels = [p.name for p in image]
    else:
        split = load_split(data_dir_or_default(data_dir), train=True, download_missing=download)
        pick = np.random.default_rng(seed).choice(len(split), size=min(count, len(split)), replace=False)
        images, labels = split.images[pick], [CLASSES[i] for i in split.labels[pick]]
    write_image_grid(preview(images, labels, views, seed, settings.augment_odds), out_file)
    pipeline = describe(train_pipeline(odds=settings.augment_odds))
    if as_json:
        print_json({"out": str(out_file), "images": labels, "views": views, "seed": seed, "pipeline": pipeline})
    else:
        out.print("[bold]Training pipeline[/]")
        for line in pipeline:
            out.print(f"  {literal(line)}", soft_wrap=True)
        out.print(f"Wrote {counted(len(labels), 'image')} x {counted(views, 'view')} to [bold]{literal(out_file)}[/]",
                  soft_wrap=True)


@fails_cleanly
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder, or its history.json.", show_default=False)],
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", dir_okay=False, show_default=False,
        help=helped("PNG file to write.", "curves.png next to history.json"))] = None,
    title: Annotated[str, typer.Option("--title", help="A heading for the picture.")] = "",
    as_json: Json = False,
) -> None:
    """Training curves (loss and accuracy per epoch, and the learning rate) from a run's history.json, as a PNG."""
    from cifar_cli.files import check_output
    from cifar_cli.records import chosen_epoch, headline
    from cifar_cli.report import write_training_curves
    from cifar_cli.run_folder import read_history

    run = run.expanduser()
    history = read_history(run)
    out_file = check_output(out_file or (run if run.is_dir() else run.parent) / "curves.png", ".png", "--out")
    write_training_curves(history, out_file, title)
    summed = headline(history)  # test accuracy, or held-out where the run left the test set out
    last, best = history[-1], chosen_epoch(history)
    best_by = "held_out_acc" if last.held_out_acc is not None else None
    if as_json:
        print_json({"out": str(out_file), "epochs": len(history), "final_test_acc": last.test_acc,
                    "best_test_acc": best.test_acc, "final_held_out_acc": last.held_out_acc, "best_by": best_by,
                    "best_acc": best.score, "best_epoch": best.epoch})
        return
    chosen = (f"best held-out {100 * best.held_out_acc:.2f}% (epoch {best.epoch})" if best_by
              else "no held-out images to choose a best epoch by")
    out.print(f"Wrote {literal(out_file)}: {counted(len(history), 'epoch')}, final {summed.name} accuracy "
              f"{100 * summed.of(last):.2f}%, {chosen}", soft_wrap=True)
