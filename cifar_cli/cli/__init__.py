"""The `cifar` command: parses options, calls the core modules, prints what they return; it decides nothing.

The commands live by what users do with them: inspect (models, summary, receptive-field, augment-preview,
plot), train, checkpoints (eval, predict, convert, export), explain (mistakes, gradcam, lr-find) and serve (app);
options.py holds what they share. Everything that came from the user or from a file is printed through terminal.literal.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Annotated, Any

import typer

from cifar_cli import __version__
from cifar_cli.cli import checkpoints, explain, inspect, serve, train
from cifar_cli.cli.options import error, out, output_lost, stdout_lost

app = typer.Typer(
    name="cifar",
    help="Train, inspect and evaluate small convolutional networks on CIFAR-10.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"cifar-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Train, inspect and evaluate small convolutional networks on CIFAR-10."""


# In the order `cifar --help` lists them.
app.command("models")(inspect.models_command)
app.command("summary", help=inspect.summary_help())(inspect.summary)
app.command("receptive-field")(inspect.receptive_field_command)
app.command("augment-preview")(inspect.augment_preview)
app.command("train")(train.train)
app.command("eval")(checkpoints.eval_command)
app.command("predict")(checkpoints.predict)
app.command("mistakes")(explain.mistakes)
app.command("gradcam")(explain.gradcam)
app.command("lr-find")(explain.lr_find)
app.command("plot")(inspect.plot)
app.command("convert")(checkpoints.convert)
app.command("export")(checkpoints.export)
app.command("app")(serve.app)


def usage_error(e: Any) -> None:
    """A usage error Typer finds (a bad option value, a missing argument, an unknown option) in the one
    style of every error here: one `error:` line on stderr, naming where the options are listed, instead of
    Typer's boxed panel. The exit code stays Click's 2."""
    if type(e).__name__ == "NoArgsIsHelpError":  # `cifar` alone: the help, which Typer has printed
        return
    ctx = getattr(e, "ctx", None)
    where = f" ({ctx.command_path} --help lists the options)" if ctx is not None else ""
    error(" ".join(e.format_message().split()).removesuffix(".") + where)


class _UsageErrorsInOurStyle(importlib.abc.MetaPathFinder):
    """Typer prints every usage error through one function of its Rich face, typer.rich_utils (typer/core.py,
    _main), which it imports only for help or an error: it is replaced as that module loads, so that a TAB
    (completion starts a fresh process) never pays for importing it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "typer.rich_utils":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            module.rich_format_error = usage_error

        spec.loader.exec_module = exec_module
        return spec


if "typer.rich_utils" in sys.modules:
    sys.modules["typer.rich_utils"].rich_format_error = usage_error
else:
    sys.meta_path.insert(0, _UsageErrorsInOurStyle())


def main() -> None:
    try:
        app(prog_name="cifar")
    except SystemExit as e:
        code = e.code
    except OSError as e:  # --help or --version, which run before any command, writing to a full disk
        if (lost := output_lost(e)) is None:
            raise
        stdout_lost(lost)
        code = 2
    try:
        sys.stdout.flush()  # here, not at exit: Python reports a failed final flush with a traceback
    except OSError as e:
        stdout_lost(e)
        code = 2
    sys.exit(code)
