"""A user's picture files (`cifar predict`, `gradcam`, `augment-preview`) as uint8 RGB arrays the size of a
CIFAR-10 image, read as a person sees them; only plain raster formats are decoded.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifar_cli.errors import CifarError
from cifar_cli.files import read_input

MAX_IMAGE_BYTES = 256 * 2**20
MAX_IMAGE_PIXELS = 64_000_000  # a 64-megapixel photo; more is a decompression bomb, refused before decoding
# Plain raster formats, recognised by their content whatever the file's name. Every other format Pillow knows
# is refused: EPS hands the file to Ghostscript (a program running on hostile input), and the rest are
# containers, vector drawings or scientific formats whose pixels are not a photo.
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
HEADER_BYTES = 16  # what Pillow looks at to recognise a format
OTHER_DOCUMENTS = ((b"%PDF-", "a PDF document"), (b"<svg", "an SVG drawing"), (b"<?xml", "an XML document"))
# The first test image of each class, as PNG (scripts/make_examples.py): pictures to try a network on that
# need no download (cifar app's examples; cifar export's check when the test set is not at hand).
EXAMPLES = Path(__file__).parent / "examples"


def example_pictures() -> list[Path]:
    """The example pictures, one per class, in CIFAR-10's class order."""
    from cifar_cli.data import CLASSES

    return [EXAMPLES / f"{name}.png" for name in CLASSES]


def load_image(path: Path, size: int = 32, noted: Callable[[str], None] | None = None) -> np.ndarray:
    """A picture file as uint8 size x size x 3 RGB, as a person sees it: turned upright by its EXIF
    orientation, transparency over white, wide pixels scaled from their real range (see _grey_levels),
    bicubic resize. A picture that is not square is squashed, aspect not kept, rather than cropped (a crop
    could cut away the very object to classify), and `noted` is told so in one line. Only PICTURE_FORMATS
    are decoded; anything else is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    raw = read_input(path, MAX_IMAGE_BYTES, "image")
    buffer = io.BytesIO(raw)
    try:
        with Image.open(buffer, formats=PICTURE_FORMATS) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise CifarError(f"image {path} is {im.width} x {im.height} pixels, more than the "
                                 f"{MAX_IMAGE_PIXELS:,} this reads (a decompression bomb?)")
            pixels = picture_pixels(im, path, size, noted)
    except UnidentifiedImageError:
        raise CifarError(f"cannot read image {path}: {_what_it_is(raw)}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        # Pillow names the in-memory buffer it was given; the user knows the file by its path
        why = str(e).replace(repr(buffer), str(path)) or type(e).__name__
        raise CifarError(f"cannot read image {path}: {why}") from None
    return pixels


def picture_pixels(im: object, path: Path | str, size: int = 32,
                   noted: Callable[[str], None] | None = None) -> np.ndarray:
    """A decoded Pillow picture (a file's, or one the Python API is handed) as load_image describes: uint8
    size x size x 3 RGB, upright, transparency over white, wide pixels scaled; `path` names it in errors."""
    from PIL import Image, ImageOps

    upright = ImageOps.exif_transpose(im)  # a copy: the format's own tags stay on `im`
    if noted is not None and upright.width != upright.height:
        noted(f"{path} is {upright.width}x{upright.height}, not square: squashed to {size}x{size} "
              "(aspect not kept, nothing cropped)")
    rgb = _as_rgb(upright, _declared_range(im), Path(path)).resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def load_images(paths: list[Path], noted: Callable[[str], None] | None = None
                ) -> tuple[list[Path], np.ndarray | None, list[tuple[Path, str]]]:
    """The pictures that can be read (their paths and pixels, None if none can) and, for each that cannot,
    why: one bad file among several spoils none of the others."""
    good, pixels, bad = [], [], []
    for path in paths:
        try:
            pixels.append(load_image(path, noted=noted))
            good.append(path)
        except CifarError as e:
            bad.append((path, str(e)))
    return good, (np.stack(pixels) if pixels else None), bad


def _what_it_is(raw: bytes) -> str:
    """Why a file is not a picture this reads, told from its first bytes alone (nothing is decoded)."""
    from PIL import Image

    Image.init()
    readable = f"this reads {', '.join(PICTURE_FORMATS)}"
    header = raw[:HEADER_BYTES]
    for name, (factory, accept) in Image.OPEN.items():
        if _recognises(accept, header):
            if name in PICTURE_FORMATS:
                return f"its {name} data is damaged, or of a kind Pillow does not decode"
            described = getattr(factory, "format_description", None)
            kind = f"{name} ({described})" if described and described != name else name
            return f"it is {kind}, a format this does not read; {readable}"
    for signature, kind in OTHER_DOCUMENTS:
        if raw.lstrip()[:len(signature)] == signature:
            return f"it is {kind}, not a picture; {readable}"
    return f"not a picture in any format this recognises; {readable}"


def _recognises(accept: Callable[[bytes], object] | None, header: bytes) -> bool:
    try:
        return accept is not None and bool(accept(header))
    except Exception:  # a plugin's check of a short or odd header; that plugin simply does not recognise it
        return False


def _as_rgb(im: object, declared: tuple[float, float] | None, path: Path) -> object:
    """8-bit RGB. Pillow's own convert clips wide (16-bit, 32-bit, float) pixels to 0..255 and drops
    transparency onto whatever colour the hidden pixels happen to have; this scales the first and lays
    the second over white, as a browser or document shows it."""
    from PIL import Image

    if im.mode == "F" or im.mode.startswith("I"):
        return Image.fromarray(_grey_levels(np.asarray(im), declared, path)).convert("RGB")
    if "A" in im.getbands() or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def _declared_range(im: object) -> tuple[float, float] | None:
    """The pixel values that a wide greyscale picture's own type calls black and white, where it says:
    16-bit (and 8-bit) integers span their type's range, signed ones offset so the lowest value is black.
    None for 32-bit integers and floats, whose type has no conventional white (see _grey_levels)."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PPM"):  # Pillow scales PGM to 16 bits
        return 0.0, 65535.0
    if im.mode != "I" or im.format != "TIFF":
        return None
    bits, sample_format = _first(im.tag_v2.get(258)), _first(im.tag_v2.get(339))  # BitsPerSample, SampleFormat
    if bits not in (8, 16):
        return None
    top = 2.0**bits - 1
    return (-(top + 1) / 2, top / 2) if sample_format == 2 else (0.0, top)


def _first(tag: object) -> object:
    return tag[0] if isinstance(tag, tuple) and tag else tag


def _grey_levels(pixels: np.ndarray, declared: tuple[float, float] | None, path: Path) -> np.ndarray:
    """uint8 levels of one wide channel: its declared range, else floats within 0..1 as 0 = black and
    1 = white (the convention for float pictures), else the picture's own lowest and highest values (a float
    TIFF of 0..4095 counts or a 32-bit one of any range; one uniform value is mid-grey). NaN or infinite
    pixels have no level at all and are refused."""
    pixels = pixels.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise CifarError(f"cannot read image {path}: it has NaN or infinite pixels, which have no brightness")
    low, high = declared or (float(pixels.min()), float(pixels.max()))
    if declared is None and 0 <= low and high <= 1:
        low, high = 0.0, 1.0
    if high == low:
        return np.full(pixels.shape, 128, np.uint8)
    return np.clip((pixels - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)
