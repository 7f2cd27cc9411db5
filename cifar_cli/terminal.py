"""What reaches the terminal: two consoles, and the one way text from a user or a file is shown.

Rich reads `[...]` as markup and `:name:` as an emoji code, and a terminal acts on escape codes and starts
a new line at a newline; a path, layer or class name must do none of that. The consoles never replace
emoji codes, and every piece of outside text goes through `literal` (or, in text printed without markup,
`visible`).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def console(stderr: bool = False) -> Console:
    """A console that prints our markup and nothing else: no emoji codes, no guessing at highlights."""
    return Console(stderr=stderr, highlight=False, emoji=False)


def visible(value: object) -> str:
    """The text with every character that is not printable (newline, carriage return, tab, escape, other
    control and format characters) written as its Python escape, so it shows instead of acting."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def literal(value: object, keep_lines: bool = False) -> str:
    """Outside text for a string that Rich reads as markup: shown as written, on the line it is on. With
    `keep_lines`, text of several lines (a library's table) keeps its line breaks, each line shown so."""
    if keep_lines:
        return "\n".join(escape(visible(line)) for line in str(value).split("\n"))
    return escape(visible(value))
