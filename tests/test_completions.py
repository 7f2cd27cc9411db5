"""The shipped completion scripts are exactly what the app generates, and they complete real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMPLETIONS = Path(__file__).resolve().parents[1] / "completions"
CONSOLE_SCRIPT = Path(sys.executable).parent / "cifar"


def _run(env: dict[str, str]) -> str:
    result = subprocess.run([str(CONSOLE_SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shipped_script_matches_the_app(shell: str) -> None:
    generated = _run({"_CIFAR_COMPLETE": f"source_{shell}"})
    shipped = (COMPLETIONS / f"cifar.{shell}").read_text()
    assert generated == shipped, f"regenerate: _CIFAR_COMPLETE=source_{shell} cifar > completions/cifar.{shell}"


def complete(words: str) -> list[str]:
    cword = str(len(words.split()) - 1)
    return _run({"_CIFAR_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}).split()


def test_completion_offers_commands_and_options() -> None:
    assert set(complete("cifar ''")) >= {"summary", "receptive-field", "augment-preview", "train", "eval", "predict",
                                     "plot"}
    assert complete("cifar rec") == ["receptive-field"]
    assert "--resume" in complete("cifar train --re")
    assert complete("cifar train --device c") == ["cuda", "cpu"]


def test_completion_offers_presets_network_files_classes_and_layers(tmp_path: Path) -> None:
    assert set(complete("cifar train --model cifarnet-d")) == {"cifarnet-ds48", "cifarnet-ds"}
    assert "s9-reference" in complete("cifar eval --model ''")
    marker = tmp_path / "imported"
    (tmp_path / "mynet.py").write_text(f"open({str(marker)!r}, 'w')\nclass Net: ...\ndef make_net(): ...\n")
    assert complete(f"cifar train --model {tmp_path}/my") == [f"{tmp_path}/mynet.py:"]
    assert complete(f"cifar train --model {tmp_path}/mynet.py:") == [f"{tmp_path}/mynet.py:Net",
                                                                     f"{tmp_path}/mynet.py:make_net"]
    assert not marker.exists()  # the file was read, never run
    assert complete("cifar mistakes --class d") == ["deer", "dog"]
    layers = complete("cifar gradcam --layer c4")
    assert layers and all(name.startswith("c4") for name in layers)


def test_a_tab_imports_neither_torch_nor_typers_help_face() -> None:
    probe = ("import sys, runpy; sys.argv = ['cifar']\n"
             "try:\n    runpy.run_module('cifar_cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'numpy', 'typer.rich_utils') if m in sys.modules))")
    env = {**os.environ, "_CIFAR_COMPLETE": "complete_bash", "COMP_WORDS": "cifar train --model cif", "COMP_CWORD": "3"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[-2] == "[]", (result.stdout, result.stderr)
