"""`cifar app`: a web page for trying a checkpoint (Gradio) — a picture's top classes, a Grad-CAM overlay from a
layer chosen in the page, and the test images the network gets most confidently wrong.

The page classifies exactly as `cifar predict` does (the same picture reader, the same probabilities) and
explains as `cifar gradcam` does; it holds one network, loaded once, and never imports code because a
checkpoint names it. Gradio is imported only here, and only when a page is built (the [app] extra).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_cli.checkpoint import Checkpoint
from cifar_cli.data import Split
from cifar_cli.errors import CifarError
from cifar_cli.explain import default_cam_layer, find_mistakes, gradcam, spatial_layers
from cifar_cli.pictures import example_pictures, load_image
from cifar_cli.report import cam_overlay
from cifar_cli.training.evaluation import predict

SHOWN_SIZE = 256  # pixels a side: a 32x32 picture, enlarged so that a person can see what the map covers
MAX_MISTAKES = 100  # the most the gallery shows (and a Space stores)
DEFAULT_MISTAKES = 24
# A 32x32 picture drawn the size of its frame with its pixels kept sharp, as the network sees it.
PAGE_CSS = """
#picture img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#mistakes img { image-rendering: pixelated; }
"""


@dataclass(frozen=True)
class Classifier:
    """One network, ready to classify and explain pictures as `cifar predict` and `cifar gradcam` do."""

    network: nn.Module  # on `device`, in eval mode
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    tta: bool
    amp_dtype: torch.dtype | None = None
    # Grad-CAM swaps ReLUs out of in-place mode and hooks layers: one picture at a time, whatever Gradio's threads do
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N x classes) of uint8 N x 32 x 32 x 3 pictures, as `cifar predict` gives them."""
        with self.lock:
            return predict(self.network, pixels, self.device, self.mean, self.std, tta=self.tta,
                           amp_dtype=self.amp_dtype).numpy()

    def top(self, probs: np.ndarray, k: int) -> dict[str, float]:
        """The k most likely classes of one picture, from its probabilities, with them."""
        return {self.classes[i]: float(probs[i]) for i in np.argsort(-probs, kind="stable")[:k]}

    def cam_layers(self) -> tuple[list[str], str]:
        """The convolutions Grad-CAM can explain (their output is a feature map), and the default one."""
        shapes = spatial_layers(self.network)
        convs = [name for name, module in self.network.named_modules()
                 if isinstance(module, nn.Conv2d) and name in shapes]
        return convs, default_cam_layer(self.network)

    def overlay(self, pixels: np.ndarray, layer: str, opacity: float, target: int) -> np.ndarray:
        """The Grad-CAM map of class `target` from `layer`, laid over the picture, SHOWN_SIZE a side."""
        from PIL import Image

        with self.lock:
            heat = gradcam(self.network, pixels[None], layer, [target], self.device, self.mean, self.std)[0]
        laid = (np.clip(cam_overlay(pixels, heat, opacity), 0, 1) * 255).round().astype(np.uint8)
        return np.asarray(Image.fromarray(laid).resize((SHOWN_SIZE, SHOWN_SIZE), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class Gallery:
    """Misclassified test images, the most confident first (uint8 N x 32 x 32 x 3), each with a caption."""

    images: np.ndarray
    captions: tuple[str, ...]

    def first(self, count: int) -> list[tuple[np.ndarray, str]]:
        return list(zip(self.images[:count], self.captions[:count]))


def find_gallery(classifier: Classifier, split: Split, most: int = MAX_MISTAKES) -> Gallery:
    """The `most` most confident mistakes on `split`, as `cifar mistakes` finds and titles them."""
    with classifier.lock:
        found = find_mistakes(classifier.network, split, classifier.device, classifier.mean, classifier.std,
                              tta=classifier.tta)[:most]
    name = classifier.classes.__getitem__
    captions = tuple(f"{name(m.true)} -> {name(m.predicted)} {100 * m.probability:.0f}% (test #{m.index})"
                     for m in found)
    return Gallery(split.images[[m.index for m in found]].reshape(-1, 32, 32, 3), captions)


def gallery_bytes(gallery: Gallery) -> bytes:
    """A Space's gallery file: plain arrays, which np.load reads back with allow_pickle=False."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=gallery.images, captions=np.array(gallery.captions, dtype=str))
    return buffer.getvalue()


def read_gallery(path: Path) -> Gallery:
    with np.load(path, allow_pickle=False) as saved:
        return Gallery(saved["images"], tuple(str(c) for c in saved["captions"]))


class LazyGallery:
    """The gallery, found the first time the page asks for it (judging 10,000 test images takes seconds on a
    CPU, which the page should not wait for at start); `find` raises CifarError when there is no test set."""

    def __init__(self, find: Callable[[], Gallery]):
        self._find, self._found, self._lock = find, None, threading.Lock()

    def __call__(self) -> Gallery:
        with self._lock:
            if self._found is None:
                self._found = self._find()
            return self._found


@dataclass(frozen=True)
class PageText:
    """What the page says about the checkpoint it serves."""

    title: str  # the network
    about: str  # a line: which checkpoint, its recorded accuracy


def look(classifier: Classifier, picture: str | None, k: int | None = 3, layer: str | None = None,
         opacity: float | None = 0.5) -> tuple[dict[str, float] | None, np.ndarray | None, str]:
    """What the page shows for a picture file: its top-k classes, the Grad-CAM overlay from `layer` (None:
    the default layer, as `cifar gradcam`'s), and a note (a picture that is not square is squashed, as
    `cifar predict` says)."""
    if not picture:
        return None, None, ""
    notes: list[str] = []
    pixels = np.array(load_image(Path(picture), noted=notes.append))  # a copy torch may write to
    k = max(1, min(int(k or 3), len(classifier.classes)))
    layer = layer or default_cam_layer(classifier.network)
    opacity = 0.5 if opacity is None else min(max(float(opacity), 0.0), 1.0)
    probs = classifier.probabilities(pixels[None])[0]  # once: the classes shown, and the class explained
    overlay = classifier.overlay(pixels, layer, opacity, int(probs.argmax()))
    return classifier.top(probs, k), overlay, " ".join(notes)


def build_page(classifier: Classifier, text: PageText, gallery: Callable[[], Gallery]):  # -> gradio.Blocks
    """The page: a picture (uploaded, pasted or one of the examples) -> top-k classes and a Grad-CAM overlay;
    below, the most confident mistakes on the test set, as many as chosen."""
    import gradio as gr

    layers, default_layer = classifier.cam_layers()
    with gr.Blocks(title=f"cifar-cli: {text.title}") as page:
        gr.Markdown(f"## {text.title}\n{text.about}")
        with gr.Row():
            with gr.Column():
                picture = gr.Image(type="filepath", label="Picture (resized to 32x32 as cifar predict does)",
                                   sources=["upload", "clipboard"], elem_id="picture", height=280)
                gr.Examples([[str(p)] for p in example_pictures()], inputs=[picture], label="Test images")
                k = gr.Slider(1, len(classifier.classes), value=3, step=1, label="Classes shown (top k)")
                layer = gr.Dropdown(layers, value=default_layer, label="Grad-CAM layer")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heat map opacity")
            with gr.Column():
                classes = gr.Label(num_top_classes=len(classifier.classes), label="Predicted classes",
                                   elem_id="classes")
                overlay = gr.Image(label="Grad-CAM of the predicted class", format="png", elem_id="gradcam",
                                   interactive=False, height=280)
                note = gr.Markdown(elem_id="note")
        with gr.Accordion("Mistakes on the test set, most confident first", open=False):
            count = gr.Slider(1, MAX_MISTAKES, value=DEFAULT_MISTAKES, step=1, label="How many")
            show = gr.Button("Show the mistakes")
            why = gr.Markdown()
            mistakes = gr.Gallery(label="true class -> predicted class, its confidence", columns=6, format="png",
                                  elem_id="mistakes")

        def on_picture(path: str | None, k: int, layer: str, opacity: float):
            try:
                return look(classifier, path, k, layer, opacity)
            except CifarError as e:
                raise gr.Error(str(e)) from None

        def on_count(count: int):
            try:
                found = gallery()
            except CifarError as e:
                return [], f"No gallery: {e}"
            return found.first(int(count)), "" if found.captions else "It gets every test image right."

        inputs, shown = [picture, k, layer, opacity], [classes, overlay, note]
        picture.change(on_picture, inputs, shown, api_name="look")  # what gradio_client calls: /look
        for changed in (k.change, layer.change, opacity.release):
            changed(on_picture, inputs, shown, api_visibility="private")
        show.click(on_count, [count], [mistakes, why], api_name="mistakes")
        count.release(on_count, [count], [mistakes, why], api_visibility="private")
    return page


def page_text(path: Path, ckpt: Checkpoint) -> PageText:
    """The page's heading: the network, and what the checkpoint says of itself."""
    accuracy = ckpt.metrics.get("test_acc")
    measured = (f"; {100 * accuracy:.2f}% on {int(ckpt.metrics.get('test_images', 10000)):,} test images as "
                "recorded in the file" if isinstance(accuracy, float) else "")
    return PageText(ckpt.model.describe(), f"`{path.name}`: epoch {ckpt.epoch}, cifar-cli {ckpt.version}{measured}.")


def classifier_for(ckpt: Checkpoint, network: nn.Module, device: torch.device, tta: bool) -> Classifier:
    """The page's classifier: the checkpoint's classes and normalisation, training's autocast on the device."""
    from cifar_cli.runtime import Runtime

    return Classifier(network.to(device).eval(), ckpt.classes, ckpt.mean, ckpt.std, device, tta,
                      Runtime().amp_dtype(device))


def serve(page, host: str, port: int | None, share: bool = False, started: Callable[[str], None] = print) -> None:
    """Serve the page until Ctrl-C; `started` is told its address. Port None: Gradio's (GRADIO_SERVER_PORT,
    else the first free one from 7860)."""
    import time

    try:
        _, url, share_url = page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                        quiet=True, show_error=True, footer_links=["api"], css=PAGE_CSS)
    except OSError as e:
        why = "the port is in use; choose another with --port" if "empty port" in str(e) else str(e)
        raise CifarError(f"cannot serve on {host}:{port}: {why}") from None
    started(share_url or url)
    try:
        while page.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        page.close()


def serve_space(checkpoint: Path, model: str | None = None, gallery: Path | None = None) -> None:
    """A Space's app.py: the page of `checkpoint`, its mistakes from the `gallery` file written beside it, on
    the address Hugging Face gives (GRADIO_SERVER_NAME and _PORT; here 127.0.0.1 and the first free port)."""
    import os

    from cifar_cli.opening import open_checkpoint
    from cifar_cli.runtime import resolve_device
    from cifar_cli.settings import DEFAULTS

    opened = open_checkpoint(checkpoint, model, print)
    classifier = classifier_for(opened.ckpt, opened.network, resolve_device("auto"), DEFAULTS.tta)

    def stored() -> Gallery:
        if gallery is None or not gallery.is_file():
            raise CifarError("this Space was written without the test set, so it has no mistakes to show")
        return read_gallery(gallery)

    page = build_page(classifier, page_text(opened.path, opened.ckpt), stored)
    serve(page, os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), None)
