"""`cifar app --space DIR`: a folder to upload as a Hugging Face Space that serves the `cifar app` page of one
checkpoint: app.py, requirements.txt, the weights, the mistakes gallery, a README with the Space's metadata,
and, for a user's own network, its source file (the very one the checkpoint's hash names: the Space imports it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cifar_cli import __version__
from cifar_cli.app import Gallery, gallery_bytes
from cifar_cli.checkpoint import Checkpoint, save_checkpoint, weights_only
from cifar_cli.errors import CifarError
from cifar_cli.files import write_atomic
from cifar_cli.models import ModelSpec, source_file

WEIGHTS = "model.safetensors"
GALLERY = "mistakes.npz"

APP = '''"""The `cifar app` page of {weights}, as a Hugging Face Space (written by `cifar app --space`)."""

from pathlib import Path

from cifar_cli.app import serve_space

HERE = Path(__file__).resolve().parent
serve_space(HERE / "{weights}", model={model}, gallery=HERE / "{gallery}")
'''

README = """---
title: {title}
emoji: 🖼️
colorFrom: blue
colorTo: indigo
sdk: gradio
sdk_version: {gradio}
app_file: app.py
pinned: false
short_description: A CIFAR-10 classifier with Grad-CAM, from cifar-cli
---

# {title}

Try a CIFAR-10 network: upload a picture (or pick a test image) to see its most likely classes and a Grad-CAM
map of where the network looked; below, the test images it gets most confidently wrong.

- Network: {network}
- Checkpoint: `{weights}`, epoch {epoch}{accuracy}
{carried}
Written by `cifar app --space` (cifar-cli {version}). Run it here with `pip install -r requirements.txt &&
python app.py`; on Hugging Face, upload this folder as a Gradio Space.
"""


@dataclass(frozen=True)
class Space:
    """What `write_space` wrote: the folder, its files, how it installs cifar-cli, and the network's source
    file it carries (user networks), if any."""

    folder: Path
    files: tuple[str, ...]
    requirement: str
    network_file: str | None
    mistakes: int  # in the gallery file
    no_mistakes: str | None  # why there is no gallery file


def cifar_cli_requirement(given: str | None) -> tuple[str, str | None]:
    """requirements.txt's line for cifar-cli, and a warning when a Space could not install it that way.
    `given`: a folder (a checkout), a URL (git+https://..., https://...whl) or a requirement; by default, where
    this cifar-cli was installed from (pip records it: PEP 610's direct_url.json), else its version."""
    if given:
        if Path(given).expanduser().is_dir():
            return _from_url(Path(given).expanduser().resolve().as_uri())
        return (f"cifar-cli[app] @ {given}" if "://" in given else given), None
    try:
        recorded = metadata.distribution("cifar-cli").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        recorded = None
    if not recorded:
        return f"cifar-cli[app]=={__version__}", None
    origin = json.loads(recorded)
    vcs = origin.get("vcs_info")
    if vcs:
        return f"cifar-cli[app] @ {vcs['vcs']}+{origin['url']}@{vcs['commit_id']}", None
    return _from_url(origin["url"])


def _from_url(url: str) -> tuple[str, str | None]:
    warning = (f"requirements.txt installs cifar-cli from {url}, which exists only on this machine: before "
               "uploading the Space, pass --cifar-cli with a URL it can reach (git+https://...)"
               if url.startswith("file:") else None)
    return f"cifar-cli[app] @ {url}", warning


def write_space(folder: Path, path: Path, ckpt: Checkpoint, spec: ModelSpec, gallery: Callable[[], Gallery],
                requirement: str) -> Space:
    """Write the Space of the checkpoint at `path` (its network built as `spec`) into `folder`, new or empty,
    with the mistakes `gallery` finds (none, and why, when it raises CifarError: no test set at hand)."""
    folder = folder.expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CifarError(f"{folder} exists and is not an empty folder; choose a new one for the Space")
    network_file, source, model = _network_source(path, ckpt, spec)
    try:
        found, no_mistakes = gallery(), None
    except CifarError as e:
        found, no_mistakes = None, str(e)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"app.py": APP.format(weights=WEIGHTS, model=model, gallery=GALLERY).encode(),
             "requirements.txt": f"{requirement}\n".encode(),
             "README.md": _readme(ckpt, metadata.version("gradio"), network_file).encode()}
    if network_file is not None:
        files[network_file.name] = source
    if found is not None:
        files[GALLERY] = gallery_bytes(found)
    for name, data in files.items():
        write_atomic(folder / name, data)
    save_checkpoint(folder / WEIGHTS, weights_only(ckpt))
    return Space(folder, tuple(sorted([*files, WEIGHTS])), requirement, network_file.name if network_file else None,
                 0 if found is None else len(found.captions), no_mistakes)


def _network_source(path: Path, ckpt: Checkpoint, spec: ModelSpec) -> tuple[Path | None, bytes, str]:
    """A user network's source file and its bytes, read once and checked to be the ones the checkpoint's hash
    names, and the expression app.py passes as the network (its copy beside app.py); (None, b"", "None") for
    a preset."""
    if ckpt.model.is_preset:
        return None, b"", "None"
    source = source_file(spec.name)
    if source is None:
        raise CifarError(f"{spec.name} is imported from a package, which a Space cannot carry: put the network "
                         "in one file and pass --model FILE.py:NAME")
    text = source.read_bytes()
    if hashlib.sha256(text).hexdigest() != ckpt.model.source_sha256:
        raise CifarError(f"{source} has changed since {path} was written (its hash differs from the "
                         "checkpoint's): the Space must carry the source that trained these weights")
    name = spec.name.rpartition(":")[2]  # the copy beside app.py, wherever the Space runs it from
    return source, text, f'f"{{HERE / {source.name!r}}}:{name}"'


def _readme(ckpt: Checkpoint, gradio_version: str, network_file: Path | None) -> str:
    accuracy = ckpt.metrics.get("test_acc")
    return README.format(
        title=f"CIFAR-10: {ckpt.model.describe()}"[:60], gradio=gradio_version, network=ckpt.model.describe(),
        weights=WEIGHTS, epoch=ckpt.epoch, version=__version__,
        accuracy=f", {100 * accuracy:.2f}% test accuracy as recorded" if isinstance(accuracy, float) else "",
        carried=(f"- Source: `{network_file.name}`, the network's own file (sha256 "
                 f"{ckpt.model.source_sha256[:12]}...), which app.py imports\n" if network_file else ""))
