"""Pictures and learning-rate ranges from users: what is read, how it is shown, and what is refused.

Pictures: only plain raster formats are decoded, recognised by content (never a format that runs a program);
wide pixels are scaled from their real range; every error names the file the user gave.
lr-find: a range is checked before any training, and the finding says so when it cannot suggest anything.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, cli
from PIL import EpsImagePlugin, Image

from cifar_cli.errors import CifarError
from cifar_cli.pictures import load_image
from cifar_cli.training.lr_find import MIN_START_LR, finding_from, lr_schedule

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n"


def _red_over_blue() -> Image.Image:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16] = (255, 0, 0)
    pixels[16:] = (0, 0, 255)
    return Image.fromarray(pixels)


def _grey(path: Path) -> np.ndarray:
    """The one level of a greyscale picture as loaded, at its own size (nothing blurred by a resize)."""
    with Image.open(path) as im:
        size = im.width
    rgb = load_image(path, size=size).astype(int)
    assert (rgb == rgb[..., :1]).all()  # grey stays grey
    return rgb[..., 0]


# --- formats: plain rasters only, by content ----------------------------------------------------------------

@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("GIF", ".gif"),
                                         ("TIFF", ".tif"), ("WEBP", ".webp"), ("PPM", ".ppm")])
def test_plain_raster_formats_load_whatever_their_name(tmp_path: Path, fmt: str, suffix: str) -> None:
    for name in (f"picture{suffix}", "picture.dat"):  # a wrong or missing suffix changes nothing
        _red_over_blue().save(tmp_path / name, format=fmt)
        seen = load_image(tmp_path / name).astype(int)
        assert seen[4, 16, 0] > 200 and seen[4, 16, 2] < 60, fmt  # red on top
        assert seen[28, 16, 2] > 200 and seen[28, 16, 0] < 60, fmt  # blue below


@pytest.fixture()
def fake_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `gs` first on PATH that leaves a marker file if anything runs it; the marker's path is returned."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "ghostscript-ran"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\nexit 0\n")
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow looks gs up again, and would find ours
    return marker


def test_postscript_under_a_picture_name_is_refused_and_ghostscript_never_runs(tmp_path: Path,
                                                                              fake_ghostscript: Path) -> None:
    picture = tmp_path / "x.png"
    picture.write_bytes(EPS)
    with pytest.raises(CifarError, match="EPS") as refused:
        load_image(picture)
    assert str(picture) in str(refused.value)
    assert_clean_error(cli("augment-preview", "--image", picture, "--out", tmp_path / "p.png"),
                       f"cannot read image {picture}", "EPS (Encapsulated Postscript)", "PNG, JPEG")
    assert not fake_ghostscript.exists()


@pytest.mark.parametrize("name, make, kind", [
    ("icon.png", lambda p: _red_over_blue().save(p, format="ICO"), "ICO (Windows Icon)"),
    ("paint.jpg", lambda p: _red_over_blue().save(p, format="PCX"), "PCX (Paintbrush)"),
    ("doc.png", lambda p: p.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"), "a PDF document"),
    ("drawing.png", lambda p: p.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "an SVG drawing"),
    ("notes.png", lambda p: p.write_text("not a picture"), "not a picture in any format"),
    ("empty.png", lambda p: p.write_bytes(b""), "not a picture in any format"),
])
def test_other_formats_are_refused_naming_the_file_and_what_it_is(tmp_path: Path, name: str, make,
                                                                    kind: str) -> None:
    make(tmp_path / name)
    assert_clean_error(cli("augment-preview", "--image", tmp_path / name, "--out", tmp_path / "p.png"),
                       f"cannot read image {tmp_path / name}: ", kind)


def test_image_errors_name_the_users_file_never_a_memory_buffer(tmp_path: Path) -> None:
    _red_over_blue().save(tmp_path / "whole.png")
    raw = (tmp_path / "whole.png").read_bytes()
    odd = tmp_path / "[red]odd name é.png"  # printed as typed, not as markup
    for cut in (raw[:30], raw[:-40], raw[:8] + b"\0" * 40):  # a bad header, lost pixels, garbage after the magic
        odd.write_bytes(cut)
        result = cli("augment-preview", "--image", odd, "--out", tmp_path / "p.png")
        assert_clean_error(result, f"cannot read image {odd}")
        assert "BytesIO" not in result.stderr and "0x" not in result.stderr


# --- pixels as a person sees them ----------------------------------------------------------------------------

def test_float_pictures_beyond_0_to_1_are_stretched_from_their_own_range(tmp_path: Path) -> None:
    counts = np.linspace(0, 4095, 64, dtype=np.float32).reshape(8, 8)  # e.g. a 12-bit sensor's counts as floats
    Image.fromarray(counts, mode="F").save(tmp_path / "counts.tif")
    assert _grey(tmp_path / "counts.tif").ravel().tolist() == np.round(np.linspace(0, 255, 64)).tolist()
    shifted = np.full((8, 8), 1000.0, np.float32)
    shifted[:4] = 1010.0
    Image.fromarray(shifted, mode="F").save(tmp_path / "shifted.tif")
    assert set(_grey(tmp_path / "shifted.tif")[:4].ravel()) == {255} and set(_grey(tmp_path / "shifted.tif")[4:]
                                                                             .ravel()) == {0}


def test_float_pictures_within_0_to_1_keep_0_black_and_1_white(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 0.25, np.float32), mode="F").save(tmp_path / "quarter.tif")
    assert set(_grey(tmp_path / "quarter.tif").ravel()) == {64}
    Image.fromarray(np.full((8, 8), 3000.0, np.float32), mode="F").save(tmp_path / "flat.tif")
    assert set(_grey(tmp_path / "flat.tif").ravel()) == {128}  # one value beyond 0..1: no range, mid-grey


def _signed_16_bit_tiff(path: Path, values: np.ndarray) -> None:
    """Pillow writes no signed 16-bit TIFF itself: the pixels as 16-bit, tagged SampleFormat = signed."""
    Image.frombytes("I;16", values.shape[::-1], values.astype("<i2").tobytes()).save(path, tiffinfo={339: 2})


def test_integer_pictures_span_their_types_range_signed_ones_offset(tmp_path: Path) -> None:
    _signed_16_bit_tiff(tmp_path / "signed.tif", np.array([[-32768, -16384], [0, 32767]], np.int16))
    assert _grey(tmp_path / "signed.tif").tolist() == [[0, 64], [128, 255]]
    Image.fromarray(np.array([[0, 30_000], [65535, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert _grey(tmp_path / "deep.png").tolist() == [[0, 117], [255, 255]]
    # a 16-bit PGM of maxval 4095: its own white is white
    (tmp_path / "deep.pgm").write_bytes(b"P5 2 1 4095\n" + np.array([0, 4095], ">u2").tobytes())
    assert _grey(tmp_path / "deep.pgm").tolist() == [[0, 255], [0, 255]]  # (resized square)


def test_32_bit_integer_pictures_are_stretched_from_their_own_range(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-5000, 0], [100_000, 200_000]], np.int32)).save(tmp_path / "wide.tif")
    assert _grey(tmp_path / "wide.tif").tolist() == [[0, 6], [131, 255]]  # 105,000 / 205,000 of the way


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_pictures_with_non_finite_pixels_are_refused(tmp_path: Path, bad: float) -> None:
    Image.fromarray(np.array([[0.5, bad]], np.float32), mode="F").save(tmp_path / "bad.tif")
    assert_clean_error(cli("augment-preview", "--image", tmp_path / "bad.tif", "--out", tmp_path / "p.png"),
                       f"cannot read image {tmp_path / 'bad.tif'}", "NaN or infinite pixels")


def test_transparent_pixels_show_as_white_in_every_mode_with_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)  # hidden pixels are black: shown over white they must not be
    rgba[:4] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba).convert("LA").save(tmp_path / "la.png")
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((0, 7)))
    palette.save(tmp_path / "p.gif", transparency=palette.getpixel((0, 7)))
    for name in ("rgba.png", "la.png", "p.png", "p.gif"):
        seen = load_image(tmp_path / name, size=8).astype(int)
        assert (seen[6:] == 255).all(), name  # transparent half: white
        assert seen[1, 4].tolist() != [255, 255, 255], name  # opaque half: its own colour


def test_cmyk_pictures_show_their_colours(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=95)
    assert np.abs(load_image(tmp_path / "cyan.jpg", size=8).astype(int) - (0, 255, 255)).max() <= 8


# --- lr-find: ranges checked, schedules finite --------------------------------------------------------------

@pytest.mark.parametrize("start, end", [
    ("1", "0.1"), ("0.1", "0.1"),  # not rising
    ("0", "1"), ("-1", "1"), ("1e-300", "1e6"), ("5e-324", "1"),  # not positive, or too small to move a weight
    ("nan", "1"), ("1e-3", "nan"), ("1e-3", "inf"), ("-inf", "1"),  # not finite
    ("1e-3", "1e7"), ("1e-3", "1e300"),  # past any usable lr
])
def test_lr_ranges_that_cannot_run_are_one_line_errors(tiny_data: Path, tmp_path: Path, start: str,
                                                       end: str) -> None:
    assert_clean_error(cli("lr-find", "--start", start, "--end", end, "--data-dir", tiny_data, "--device", "cpu",
                           "--out", tmp_path / "lr.png"), "--start must be below --end", "1e-10", "1e+06")
    assert not (tmp_path / "lr.png").exists()


def test_the_widest_accepted_range_is_a_finite_geometric_schedule() -> None:
    for steps in (2, 3, 200, 100_000):
        lrs = np.array(lr_schedule(MIN_START_LR, 1e6, steps))
        assert np.isfinite(lrs).all() and lrs[0] == MIN_START_LR and lrs[-1] == pytest.approx(1e6, rel=1e-12)
        assert np.diff(np.log(lrs)) == pytest.approx(np.full(steps - 1, math.log(1e16) / (steps - 1)))


def test_an_extreme_but_valid_range_runs_and_reports_only_finite_lrs(tiny_data: Path, tmp_path: Path) -> None:
    result = cli("lr-find", "--start", "1e-10", "--end", "1e6", "--steps", "4", "--batch-size", "32",
                 "--data-dir", tiny_data, "--device", "cpu", "--out", tmp_path / "lr.png", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    lrs = json.loads(result.stdout)["lrs"]
    assert all(isinstance(lr, float) and math.isfinite(lr) for lr in lrs) and lrs == sorted(lrs)
    assert lrs[0] == pytest.approx(1e-10) and (tmp_path / "lr.png").stat().st_size > 1000


# --- lr-find: a suggestion only where the loss fell -------------------------------------------------------

def _curve(losses: list[float]):
    return finding_from(np.geomspace(1e-5, 10, len(losses)).tolist(), losses)


def test_a_loss_that_explodes_at_once_gives_no_suggestion() -> None:
    for losses in ([2.3, 2.4, 5.0, 40.0, math.nan], [2.3, math.inf], [2.3, 9.0, 30.0, 80.0, 200.0, 900.0, 1e4]):
        finding = _curve(losses)
        assert finding.suggestion is None and finding.diverged_at is not None, losses
        assert "exploded" in finding.how and "lower --start" in finding.how


def test_a_loss_that_never_falls_gives_no_suggestion() -> None:
    flat = (2.3 + 0.01 * np.sin(np.arange(60))).tolist()
    finding = _curve(flat)
    assert finding.suggestion is None and finding.diverged_at is None
    assert "never fell" in finding.how and "raise --end" in finding.how


def test_a_fall_too_short_to_judge_gives_no_suggestion() -> None:
    assert _curve([2.3, 0.5, 0.4, 60.0, math.nan]).suggestion is None  # lowest at step 3: two falls, no stretch


def test_a_loss_that_falls_then_explodes_suggests_a_tenth_of_its_lowest_point() -> None:
    losses = [*np.linspace(2.3, 1.0, 40), *np.geomspace(1.2, 50, 8)]
    finding = _curve(losses)
    assert finding.diverged_at is not None and finding.suggestion == pytest.approx(finding.lowest / 10)
    assert finding.lrs[0] < finding.suggestion < finding.lowest < finding.diverged_at
    assert "falls steadily" in finding.how


def test_lr_find_says_when_it_cannot_suggest(tiny_data: Path, tmp_path: Path) -> None:
    args = ("lr-find", "--start", "1e4", "--end", "1e6", "--steps", "8", "--batch-size", "32",
            "--data-dir", tiny_data, "--device", "cpu", "--out", tmp_path / "lr.png")
    report = json.loads(cli(*args, "--json").stdout)
    assert report["suggestion"] is None and report["how"].startswith("the loss ")
    said = cli(*args)
    assert said.exit_code == 0, (said.stderr, said.exception)
    assert "No suggested peak lr: the loss " in " ".join(said.stdout.split()) and "Suggested" not in said.stdout
    assert (tmp_path / "lr.png").stat().st_size > 1000


# --- pictures as the user sees them --------------------------------------------------------------------

def test_phone_photos_are_turned_upright_by_their_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)  # stored: red left, blue right
    pixels[:, 32:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the camera was held upright
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    seen = load_image(tmp_path / "phone.jpg").astype(int)
    assert seen[4, 16, 0] > 200 and seen[28, 16, 2] > 200  # viewed: red on top, blue below


def test_16_bit_and_float_pictures_keep_their_real_range(tmp_path: Path) -> None:
    grey16 = np.full((40, 40), 30_000, np.uint16)  # 46% grey, not white
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png").mean()) - 117) <= 1
    Image.fromarray(np.full((40, 40), 0.25, np.float32), mode="F").save(tmp_path / "float.tiff")
    assert abs(int(load_image(tmp_path / "float.tiff").mean()) - 64) <= 1


def test_decompression_bombs_and_special_files_are_refused(trained_run: Path, tmp_path: Path) -> None:
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")  # a few kB on disk, 100 megapixels
    for picture, words in [(tmp_path / "bomb.png", "decompression bomb"), (Path("/dev/zero"), "not a regular file")]:
        assert_clean_error(cli("predict", picture, "--checkpoint", trained_run / "best.safetensors"), words)
        assert_clean_error(cli("augment-preview", "--image", picture, "--out", tmp_path / "p.png"), words)


# --- malformed histories ---------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    '[{"epoch": 1, "train_loss": null, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "lr": 0.1, '
    '"seconds": 1, "images": 10}]',
    '[{"epoch": "1", "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "lr": 0.1, '
    '"seconds": 1, "images": 10}]',
    '[{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "test_loss": null, "test_acc": null, "lr": 0.1, '
    '"seconds": 1, "images": 10}]',  # neither a test nor a held-out figure
    '[{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "lr": 0.1, "seconds": 1, '
    '"images": 10}, {"epoch": 2, "train_loss": 1, "train_acc": 0.5, "test_loss": null, "test_acc": null, '
    '"lr": 0.1, "seconds": 1, "images": 10, "held_out_loss": 1, "held_out_acc": 0.5}]',  # nothing in every epoch
    "[" * 100_000 + "]" * 100_000, '"a string"', "[]", "[1, 2]", "{}"])
def test_plot_refuses_malformed_histories_in_one_line(tmp_path: Path, content: str) -> None:
    (tmp_path / "history.json").write_text(content)
    result = cli("plot", tmp_path / "history.json", "--out", tmp_path / "c.png")
    assert_clean_error(result, str(tmp_path / "history.json"))
    assert not (tmp_path / "c.png").exists()
