"""The command that serves a checkpoint as a web page, or writes that page as a Hugging Face Space: app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cifar_cli.cli.options import (
    CheckpointOptions,
    CheckpointPath,
    Json,
    err,
    fails_cleanly,
    helped,
    long_step,
    out,
    print_json,
    runs_checkpoint,
)
from cifar_cli.terminal import literal


@fails_cleanly
@runs_checkpoint()
def app(
    checkpoint: CheckpointPath = None,
    host: Annotated[str, typer.Option(
        "--host", help="The address to listen on; 0.0.0.0 lets other machines in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option(
        "--share", help="Also serve the page through a public gradio.live link for 72 hours (needs internet).")
    ] = False,
    space: Annotated[Path | None, typer.Option(
        "--space", file_okay=False, show_default=False,
        help="Instead of serving the page, write it as a Hugging Face Space into this new folder.")] = None,
    cifar_cli: Annotated[str | None, typer.Option(
        "--cifar-cli", show_default=False,
        help=helped("With --space: where the Space installs cifar-cli from (a git+https:// URL, a wheel's URL, a "
                    "checkout's folder, or a requirement).", "where this cifar-cli was installed from"))] = None,
    as_json: Json = False,
    *,
    options: CheckpointOptions,
) -> None:
    """A web page for trying a checkpoint: upload a picture or pick a test image, see its top classes and a
    Grad-CAM overlay (layer and opacity chosen in the page), and the test images it gets most confidently
    wrong. Needs the [app] extra: pip install 'cifar-cli[app]'.

    The page listens on 127.0.0.1 (this machine only) unless --host says otherwise; Ctrl-C stops it. With
    --space DIR it writes a folder to upload as a Hugging Face Space instead (docs/app.md).
    """
    from cifar_cli.app import LazyGallery, build_page, classifier_for, find_gallery, page_text, serve
    from cifar_cli.extras import require

    require("app", "cifar app")
    run = options.load(checkpoint)
    classifier = classifier_for(run.ckpt, run.network, run.device, run.tta)
    gallery = LazyGallery(lambda: find_gallery(classifier, _test_images(options)))
    if space is not None:
        _write_space(space, run, gallery, cifar_cli, as_json)
        return
    with long_step("building the page", as_json=as_json):
        page = build_page(classifier, page_text(run.path, run.ckpt), gallery)

    def started(url: str) -> None:
        if as_json:
            print_json({"checkpoint": str(run.path), "url": url, "host": host, "port": port, "share": share})
        else:
            out.print(f"Serving {literal(run.path)} at [bold]{literal(url)}[/] (Ctrl-C stops it)", soft_wrap=True)

    serve(page, host, port, share, started)


def _test_images(options: CheckpointOptions):
    from cifar_cli.data import load_split

    return load_split(options.data_root, train=False, download_missing=options.download)


def _write_space(folder: Path, run, gallery, cifar_cli: str | None, as_json: bool) -> None:
    from cifar_cli.space import cifar_cli_requirement, write_space

    requirement, warning = cifar_cli_requirement(cifar_cli)
    with long_step("writing the Space (finding the mistakes on the test images)", as_json=as_json):
        written = write_space(folder, run.path, run.ckpt, run.spec, gallery, requirement)
    if written.no_mistakes:
        err.print(f"note: the Space shows no mistakes: {literal(written.no_mistakes)}", soft_wrap=True)
    if warning:
        err.print(f"warning: {literal(warning)}", soft_wrap=True)
    if as_json:
        print_json({"space": str(written.folder), "files": list(written.files), "requirement": written.requirement,
                    "network_file": written.network_file, "mistakes": written.mistakes})
        return
    carried = f"; it carries {literal(written.network_file)}, your network's source" if written.network_file else ""
    out.print(f"Wrote a Hugging Face Space to [bold]{literal(written.folder)}[/]: {', '.join(written.files)}"
              f"{carried}. Try it with: cd {literal(written.folder)} && python app.py", soft_wrap=True)
