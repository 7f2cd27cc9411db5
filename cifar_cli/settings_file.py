"""A file of settings for `cifar train --config`: a run's settings.json (or its run folder), or any JSON or
TOML file of settings, read and checked key by key. Torch-free; which network it names is decided where
every network is (run_plan, under the trust rule): a settings file is a file, never a reason to import code.

Its keys: any TrainSettings field (top level, or under "settings" as settings.json has them), "model" (a
preset or FILE.py:NAME, or the record settings.json writes), "test" (true/false), "augment_on" (auto, device
or loader) and "amp" (true/false; the dtype a run's settings.json records is a record of what ran, not a
choice, and so is ignored, like the rest of what it records of where it ran: data, device, processes,
torch and cifar_cli versions).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cifar_cli.errors import CifarError
from cifar_cli.files import read_input
from cifar_cli.settings import AUGMENT_PLACES, DEFAULTS, setting_problem

MAX_BYTES = 2**20
SETTING_NAMES = tuple(f.name for f in fields(DEFAULTS))
CHOICES = ("test", "augment_on", "amp")
RECORDS = ("data", "device", "processes", "torch", "cifar_cli")  # settings.json: where the run ran


@dataclass(frozen=True)
class SettingsFile:
    path: Path
    settings: dict[str, Any]  # TrainSettings fields the file gives
    model: str | dict[str, Any] | None  # as written: a --model text, or a network record
    choices: dict[str, Any]  # test, augment_on, amp: those it gives

    def overridden(self, given: dict[str, Any]) -> list[str]:
        """The options given on the command line over a different value of the file's, as '--epochs 3 (file: 2)'."""
        mine = {**self.settings, **self.choices}
        return [f"--{key.replace('_', '-')} {value} (file: {mine[key]})" for key, value in given.items()
                if value is not None and key in mine and mine[key] != value]


def read_settings_file(path: Path) -> SettingsFile:
    """The settings in `path` (a run folder means its settings.json); an unknown key or a bad value is a
    CifarError naming the key."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "settings.json"
    data = _parse(read_input(path, MAX_BYTES, "settings file"), path)
    nested = data.get("settings", {})
    if not isinstance(nested, dict):
        raise CifarError(f"{path}: 'settings' must be a table of settings, not {type(nested).__name__}")
    settings, choices = {}, {}
    for key, value in [*nested.items(), *((k, v) for k, v in data.items() if k != "settings")]:
        if key in SETTING_NAMES:
            settings[key] = _setting(path, key, value)
        elif key in CHOICES:
            if (choice := _choice(path, key, value)) is not None:
                choices[key] = choice
        elif key not in ("model", *RECORDS):
            raise CifarError(f"{path}: unknown setting {str(key)[:80]!r} (settings: {', '.join(SETTING_NAMES)}; "
                             f"also model, {', '.join(CHOICES)})")
    recorded = data.get("data")
    if "test" not in choices and isinstance(recorded, dict) and recorded.get("test") == 0:
        choices["test"] = False  # settings.json of a --no-test run: it read no test image
    model = data.get("model")
    if model is not None and not isinstance(model, (str, dict)):
        raise CifarError(f"{path}: 'model' must be a network's name (a preset or FILE.py:NAME), not {repr(model)[:80]}")
    return SettingsFile(path, settings, model, choices)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        if path.suffix.lower() == ".toml":
            data = _toml().loads(raw.decode())
        else:
            data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CifarError(f"{path} is not a {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} file of "
                         f"settings: {first}") from None
    if not isinstance(data, dict):
        raise CifarError(f"{path} is not a file of settings: it holds a {type(data).__name__}, not a table")
    return data


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli  # a dependency on Python 3.10

    return tomli


def _setting(path: Path, key: str, value: Any) -> Any:
    """A TrainSettings value of the right kind and range (checked alone: the options may still override it)."""
    if (problem := setting_problem(key, value)) is not None:
        raise CifarError(f"{path}: {key} {problem}")
    try:
        DEFAULTS.with_options(**{key: value}).validate()
    except CifarError as e:
        raise CifarError(f"{path}: {key}: {e}") from None
    return value


def _choice(path: Path, key: str, value: Any) -> Any:
    if key == "amp":
        if value is None or value in ("bfloat16", "float16"):  # what settings.json records: what ran
            return None
        if not isinstance(value, bool):
            raise CifarError(f"{path}: amp must be true or false, not {repr(value)[:80]}")
        return value
    if key == "test" and not isinstance(value, bool):
        raise CifarError(f"{path}: test must be true or false, not {repr(value)[:80]}")
    if key == "augment_on" and value not in AUGMENT_PLACES:
        raise CifarError(f"{path}: augment_on must be one of {', '.join(AUGMENT_PLACES)}, not {repr(value)[:80]}")
    return value
