"""What the CLI prints: text from users and files shown literally everywhere, stdout under --json holding
only the JSON, library warnings as one line, and a stdout that cannot be written to (or a missing compiler
for --compile) as one error line instead of a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_ARGS, assert_clean_error, cli, safetensors_header, write_network
from PIL import Image
from safetensors.torch import load_file, save_file

from cifar_cli.models import create_model, preset_spec, resolve_model
from cifar_cli.runtime import missing_compiler
from cifar_cli.settings import DEFAULTS
from cifar_cli.terminal import visible

# Markup, an emoji code, a forged line of output, a terminal escape code and a carriage return.
HOSTILE = ["[red]x[/]", "[/]", ":rocket:", "a\nFAKE: line", "\x1b[31m", "\r"]


def _assert_literal(text: str, *shown: str) -> None:
    """Each of `shown` appears as written (control characters as escapes), and nothing acted on the terminal."""
    for value in shown:
        assert visible(value) in text, (visible(value), text)
    assert "\x1b" not in text and "\r" not in text and "\U0001f680" not in text  # escape code, CR, the rocket
    assert not any(line.startswith("FAKE") for line in text.splitlines()), text


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, so paths are short and printed lines stay within the console's width."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _room(path: str | Path) -> Path:
    """The path, with its folders made: a '/' in a hostile name (as in '[/]') is a folder separator."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


def _picture(path: Path) -> Path:
    _room(path)
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(path, format="PNG")
    return path


def test_file_names_in_predict_are_shown_literally(trained_run: Path, here: Path) -> None:
    pictures = [str(_picture(Path(f"{name}.png"))) for name in HOSTILE]
    result = cli("predict", *pictures, "-c", trained_run / "best.safetensors", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    _assert_literal(result.stdout, *pictures)
    assert len(result.stdout.splitlines()) == len(HOSTILE)  # one line per picture, none forged


@pytest.mark.parametrize("name", HOSTILE)
def test_convert_writes_and_then_prints_any_target_or_network_name(name: str, here: Path) -> None:
    torch.save(create_model(preset_spec()).state_dict(), "weights.pt")
    result = cli("convert", "weights.pt", _room(f"{name}.safetensors"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert Path(f"{name}.safetensors").is_file()
    _assert_literal(result.stdout, f"{name}.safetensors")

    spec = write_network(_room(f"{name}net.py"), "class Net(nn.Module):\n    def __init__(self):\n"
                         "        super().__init__()\n        self.fc = nn.Linear(3, 10)\n\n"
                         "    def forward(self, x):\n        return self.fc(x.mean((2, 3)))\n")
    torch.save(create_model(resolve_model(spec)).state_dict(), "mine.pt")
    mine = cli("convert", "mine.pt", "mine.safetensors", "--model", spec)
    assert mine.exit_code == 0, (mine.stderr, mine.exception)
    _assert_literal(mine.stdout, spec)


@pytest.mark.parametrize("name", HOSTILE)
def test_eval_plot_and_gradcam_print_paths_literally(name: str, trained_run: Path, tiny_data: Path,
                                                      here: Path) -> None:
    shutil.copy(trained_run / "best.safetensors", _room(f"{name}.safetensors"))
    evaluated = cli("eval", f"{name}.safetensors", "--data-dir", tiny_data, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.stderr
    _assert_literal(evaluated.stdout, f"{name}.safetensors")

    Path(name).mkdir(parents=True)
    shutil.copy(trained_run / "history.json", Path(name) / "history.json")
    plotted = cli("plot", name)
    assert plotted.exit_code == 0, plotted.stderr
    _assert_literal(plotted.stdout, str(Path(name) / "curves.png"))

    cam = cli("gradcam", _picture(Path("cat.png")), "-c", trained_run / "best.safetensors",
              "--out", _room(f"{name}.png"), "--device", "cpu")
    assert cam.exit_code == 0, cam.stderr
    _assert_literal(cam.stdout, f"{name}.png")


@pytest.mark.parametrize("name", HOSTILE)
def test_names_in_errors_stay_on_the_error_line(name: str, trained_run: Path, tiny_data: Path, here: Path) -> None:
    for result in (cli("mistakes", trained_run / "best.safetensors", "--class", name, "--data-dir", tiny_data,
                       "--device", "cpu"),
                   cli("eval", f"{name}.safetensors", "--data-dir", tiny_data, "--device", "cpu"),
                   cli("gradcam", _picture(Path("cat.png")), "-c", trained_run / "best.safetensors", "--layer", name,
                       "--device", "cpu")):
        assert result.exit_code == 2, (result.stderr, result.exception)
        assert result.stderr.count("error:") == 1 and result.stdout == ""
        _assert_literal(result.stderr, name)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


LAYERS = """
NAMES = {names!r}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        for name in NAMES:
            self.add_module(name, nn.Conv2d(3, 3, 3, padding=1))
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        for name in NAMES:
            x = F.relu(getattr(self, name)(x))
        return self.fc(x.mean((2, 3)))
"""


def test_layer_names_are_shown_literally_in_summary_and_receptive_field(tmp_path: Path) -> None:
    spec = write_network(tmp_path / "names.py", LAYERS.format(names=HOSTILE))
    summary = cli("summary", "--model", spec)
    assert summary.exit_code == 1, (summary.stderr, summary.exception)  # it breaks the design rules, nothing worse
    _assert_literal(summary.stdout, *HOSTILE)
    layers = json.loads(cli("summary", "--model", spec, "--json").stdout)["layers"]
    assert [layer["name"] for layer in layers[1:-1]] == [f"Conv2d ({name})" for name in HOSTILE]  # JSON: as is
    rf = cli("receptive-field", "--model", spec)
    assert rf.exit_code == 0, rf.stderr
    _assert_literal(rf.stdout, *HOSTILE)


# --- stdout under --json holds the JSON only; warnings are one line ---------------------------------------

CHATTY = """
import warnings

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        print("forward on", tuple(x.shape))
        warnings.warn("this network is chatty")
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))
"""


def test_a_network_that_prints_leaves_json_output_valid(tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "chatty.py", CHATTY)
    summary = cli("summary", "--model", spec, "--json")
    assert json.loads(summary.stdout)["model"]["name"] == spec
    assert "forward on" in summary.stderr
    trained = cli("train", "--model", spec, "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path / "run",
                  *TRAIN_ARGS, "--json")
    assert trained.exit_code == 0, trained.stderr
    assert json.loads(trained.stdout)["best_epoch"] == 1
    evaluated = cli("eval", tmp_path / "run" / "best.safetensors", "--model", spec, "--data-dir", tiny_data,
                    "--device", "cpu", "--json")
    assert json.loads(evaluated.stdout)["images"] == 100
    plain = cli("summary", "--model", spec)  # without --json, a print goes where the user's code sends it
    assert "forward on" in plain.stdout


def test_library_warnings_are_one_warning_line_each(tmp_path: Path) -> None:
    spec = write_network(tmp_path / "warns.py", CHATTY)
    result = cli("summary", "--model", spec, "--json")
    lines = [line for line in result.stderr.splitlines() if "chatty" in line]
    assert lines == ["warning: this network is chatty"], result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr


def test_counts_of_one_are_singular(trained_run: Path, tmp_path: Path) -> None:
    history = json.loads((trained_run / "history.json").read_text())[:1]
    (tmp_path / "history.json").write_text(json.dumps(history))
    result = cli("plot", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert ": 1 epoch, final" in " ".join(result.stdout.split())


# --- the environment ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["models"], ["models", "--json"], ["--version"], ["--help"]])
def test_a_full_stdout_is_one_error_line(args: list[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cifar_cli", *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: cannot write to standard output: No space left on device", done.stderr


def test_compile_without_a_compiler_is_refused_up_front(tiny_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert "C++ compiler" in missing_compiler("cpu") and "C compiler" in missing_compiler("cuda")
    result = cli("train", "--compile", "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path / "run",
                 *TRAIN_ARGS)
    assert result.exit_code == 2 and result.exception is None, (result.stderr, result.exception)
    assert "--compile needs a C++ compiler" in result.stderr and "without --compile" in result.stderr
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("CXX", sys.executable)  # a program that exists: found, whatever it is
    monkeypatch.setenv("CC", sys.executable)
    assert missing_compiler("cpu") is None and missing_compiler("cuda") is None
    assert os.environ["CXX"] == sys.executable


def test_summary_prints_its_layer_table_one_row_a_line() -> None:
    """The table is a library's text of many lines: shown literally, each line on its own line."""
    result = cli("summary")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("Total params:") for line in lines), result.stdout
    assert "\\n" not in result.stdout


QUICK = ("--epochs", "1", *TRAIN_ARGS)


# --- honest output -------------------------------------------------------------------------------

def test_paths_are_printed_literally_never_as_markup(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp[lr=0.1]"
    result = cli("train", "--data-dir", tiny_data, "--out", out, *QUICK)
    assert result.exit_code == 0, result.stderr
    assert str(out) in " ".join(result.stdout.split())
    assert_clean_error(cli("eval", tmp_path / "x[/]y[bold].safetensors"), f"{tmp_path / 'x[/]y[bold].safetensors'}")


def test_class_names_from_a_checkpoint_cannot_drive_the_terminal(trained_run: Path, tiny_data: Path,
                                                                 tmp_path: Path) -> None:
    meta = safetensors_header((trained_run / "best.safetensors").read_bytes())[0]["__metadata__"]
    classes = ["\x1b[2Jwiped", "[red]markup[/red]", *json.loads(meta["classes"])[2:]]
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(trained_run / "best.safetensors"), forged, metadata={**meta, "classes": json.dumps(classes)})
    result = cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2Jwiped" in result.stdout and "[red]markup[/red]" in result.stdout


def test_help_shows_every_default_from_the_settings() -> None:
    text = " ".join(cli("train", "--help").stdout.replace("│", " ").split())
    for option, name in [("Epochs to train.", "epochs"), ("one-cycle schedule.", "lr"), ("e.g. 0.999 (0: off).", "ema"),
                         ("evaluated and saved.", "lookahead"),
                         ("BatchNorm or biases).", "weight_decay"), ("training loss (0: off).", "label_smoothing"),
                         ("trained with 0.3).", "affine_p"), ("with the mean).", "cutout_p"),
                         ("network: 0.2).", "tone_p"), ("stays); 0: off.", "aug_fade"),
                         ("the augmentation (0: off).", "mixup")]:
        assert f"{option} [default: {getattr(DEFAULTS, name)}]" in text


def test_an_error_under_json_is_one_line_on_stderr_and_nothing_on_stdout(tiny_data: Path) -> None:
    result = cli("eval", "missing.safetensors", "--json", "--data-dir", tiny_data)
    assert_clean_error(result, "checkpoint not found")
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
