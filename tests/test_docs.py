"""The documentation a user follows: every link resolves, every command and option it shows exists, every test
it cites is there, and the text describes the package as it is (its version, its networks)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import cli
from typer.testing import CliRunner

from cifar_cli import __version__
from cifar_cli.cli import app
from cifar_cli.settings import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # what a user reads to use cifar-cli
PAGES = [*GUIDES, ROOT / "CHANGELOG.md", *sorted((ROOT / "results").glob("*.md")),
         *sorted((ROOT / "experiments").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?<![\w./-])(?:cifar|-m cifar_cli) ([a-z][a-z-]*)(.*)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
CITED_TEST = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    prose = FENCE.sub("", page.read_text())
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", prose, re.M)}


def _code(page: Path) -> list[str]:
    """The text a reader would type: each line of a fenced block and each inline code span outside them."""
    text = page.read_text()
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]
    return lines + INLINE_CODE.findall(FENCE.sub("", text))


@cache
def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="cifar", env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.stdout


@cache
def _commands() -> frozenset[str]:
    """The commands `cifar --help` lists."""
    listing = _help().split("─ Commands ─", 1)[1]
    return frozenset(re.findall(r"^│ ([a-z][a-z-]*) ", listing, re.M))


@cache
def _options(command: str) -> frozenset[str]:
    """The options `cifar COMMAND --help` lists, each spelling (--tta and --no-tta)."""
    found = set()
    for line in _help(command).splitlines():
        if line.startswith(("│ -", "│ * ")):
            for token in line[1:].replace("*", " ").split():
                if not token.startswith("-"):
                    break
                found.add(token)
    return frozenset(found)


def _shown_commands(page: Path) -> list[tuple[str, list[str]]]:
    """Each `cifar COMMAND ...` in the page's code, with the options it shows (a comment is not read)."""
    shown = []
    for segment in _code(page):
        for match in COMMAND.finditer(segment):
            rest = re.split(r" #|&&|;|\bcifar ", match.group(2))[0]
            shown.append((match.group(1), OPTION.findall(rest)))
    return shown


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves_to_a_file_in_the_repository(page: Path) -> None:
    prose = FENCE.sub("", page.read_text())
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto: - not a file of ours
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(ROOT), f"{_name(page)}: {target} leaves the repository"
        assert resolved.exists(), f"{_name(page)}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{_name(page)}: {target} names no heading of {resolved.name}"


@pytest.mark.parametrize("page", GUIDES, ids=_name)
def test_every_command_and_option_shown_is_one_cifar_has(page: Path) -> None:
    shown = _shown_commands(page)
    for command, options in shown:
        assert command in _commands(), f"{_name(page)}: `cifar {command}` is not a command in `cifar --help`"
        unknown = set(options) - _options(command)
        assert not unknown, f"{_name(page)}: `cifar {command}` has no option {sorted(unknown)}"
    if page.name == "README.md":  # the guide shows every command at least once
        assert {command for command, _ in shown} == _commands()


@pytest.mark.parametrize("page", GUIDES, ids=_name)
def test_every_test_cited_as_a_promise_exists(page: Path) -> None:
    for segment in _code(page):
        for path, name in CITED_TEST.findall(segment):
            assert (ROOT / path).is_file(), f"{_name(page)}: {path} does not exist"
            if name:
                assert f"def {name}(" in (ROOT / path).read_text(), f"{_name(page)}: no {name} in {path}"


@pytest.mark.parametrize("page", GUIDES, ids=_name)
def test_commands_shown_name_no_path_outside_the_repository(page: Path) -> None:
    # Commands are run from the repository's root; data is found through --data-dir or $CIFAR_DATA_DIR.
    outside = [segment for segment in _code(page) if "../" in segment]
    assert not outside, f"{_name(page)}: {outside}"


def test_the_readme_is_a_short_guide_that_opens_with_the_quick_start_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    install_and_train, install_and_test = (block.splitlines()[1] for block in FENCE.findall(readme)[:2])
    assert "pip install . && cifar train" in install_and_train
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci, "the README's second quick-start command is what .ci/run runs, verbatim"
    assert readme.index(install_and_test) < readme.index("## Commands")


def test_the_version_is_written_once_and_the_changelog_leads_with_it() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cifar_cli.__version__"}
    releases = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == __version__
    assert cli("--version").stdout.strip() == f"cifar-cli {__version__}"


def test_cifar_models_describes_the_networks_as_they_are() -> None:
    # Which network is the default is stated once (settings.DEFAULT_MODEL); a description that remembers
    # earlier defaults ("the second default") is history, and goes stale with the next change.
    rows = json.loads(cli("models", "--json").stdout)["models"]
    for row in rows:
        says_default = "default" in row["description"]
        assert says_default == (row["name"] == DEFAULT_MODEL), row
