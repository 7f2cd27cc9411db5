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


def test_completion_offers_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - 1)
        return _run({"_CIFAR_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}).split()

    assert set(complete("cifar ''")) >= {"summary", "receptive-field", "augment-preview", "train", "eval", "predict",
                                     "plot"}
    assert complete("cifar rec") == ["receptive-field"]
    assert "--resume" in complete("cifar train --re")
    assert complete("cifar train --device c") == ["cuda", "cpu"]
