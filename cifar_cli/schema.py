"""Checks for values read from files (checkpoints, histories): each returns the value in its proper kind or
raises Invalid naming the field, so every reader refuses a forged value the same way before using it.

JSON gives Python ints of any length and floats that may be NaN or infinite; `math.isfinite(10**400)`
itself raises OverflowError, so ranges are compared before anything converts a number to float.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_INT = 2**63 - 1  # what torch and numpy take as a whole number
MAX_TEXT = 10_000  # characters in a name or version string


class Invalid(ValueError):
    """A value read from a file is not what the field holds; the message names the field."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name = name


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite int or float (not a bool) in [low, high], as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(name, f"is {_shown(value)}, not a finite number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(name, f"is {value}, not a finite number")
    if not low <= value <= high:  # exact for ints of any size: no conversion to float
        raise Invalid(name, f"is {_shown(value)}, outside [{low:g}, {high:g}]")
    return float(value)


def whole(value: Any, name: str, low: int = 0, high: int = MAX_INT) -> int:
    """An int (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, f"is {_shown(value)}, not a whole number")
    if not low <= value <= high:
        raise Invalid(name, f"is {_shown(value)}, outside [{low}, {high}]")
    return value


def digits(text: Any, name: str, high: int = MAX_INT) -> int:
    """A whole number written in ASCII digits ("²" and "٣" pass str.isdigit, and int() of the first fails)."""
    if not (isinstance(text, str) and 0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        raise Invalid(name, f"is {_shown(text)}, not a whole number in digits 0-9")
    return whole(int(text), name, 0, high)


def text(value: Any, name: str, longest: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > longest:
        raise Invalid(name, f"is {_shown(value)}, not a string of up to {longest:,} characters")
    return value


def mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(name, f"is {_shown(value)}, not an object")
    return value


def like(value: Any, reference: Any, name: str) -> Any:
    """`value` shaped as `reference` is (a state torch wrote and we read back): the same keys, list lengths and
    kinds, every number finite. A float field also takes an int; an int field takes only an int."""
    if isinstance(reference, dict):
        mapping(value, name)
        if extra := sorted(set(value) - set(reference)):
            raise Invalid(name, f"has an unexpected {_shown(extra[0])}")
        if missing := sorted(set(reference) - set(value)):
            raise Invalid(name, f"has no {missing[0]!r}")
        return {k: like(value[k], reference[k], f"{name}.{k}") for k in reference}
    if isinstance(reference, (list, tuple)):
        if not isinstance(value, list) or len(value) != len(reference):
            raise Invalid(name, f"is {_shown(value)}, not a list of {len(reference)}")
        return [like(v, r, f"{name}[{i}]") for i, (v, r) in enumerate(zip(value, reference))]
    if isinstance(reference, bool) or reference is None:
        if value is not reference and not (isinstance(reference, bool) and isinstance(value, bool)):
            raise Invalid(name, f"is {_shown(value)}, expected {reference!r}")
        return value
    if isinstance(reference, int):
        return whole(value, name, -MAX_INT, MAX_INT)
    if isinstance(reference, float):
        number(value, name, -1e38, 1e38)  # within float32, where torch puts these numbers
        return value
    if isinstance(reference, str):
        return text(value, name)
    raise Invalid(name, "is of a kind no checkpoint holds")


def jsonable(value: Any) -> Any:
    """`value` as it comes back from JSON (tuples become lists, int keys strings): what a file's copy of it
    is compared with."""
    return json.loads(json.dumps(value))
