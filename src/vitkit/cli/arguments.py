"""argparse ``type=`` functions for numeric flags: a value out of range stops the command before it
loads anything, with argparse's one line naming the flag (``argument --count: must be at least 1,
got 0``) and exit status 2."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if not math.isfinite(value):  # float() reads nan and inf
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _at_least(text: str, kind: type, low: float, *, above: bool = False) -> int | float:
    value = _number(text, kind)
    if value < low or (above and value == low):
        raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {low}, got {text}")
    return kind(value)


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    return int(_at_least(text, int, 1))


def positive_float(text: str) -> float:
    """A finite number above 0."""
    return float(_at_least(text, float, 0, above=True))


def nonnegative_float(text: str) -> float:
    """A finite number, 0 or more."""
    return float(_at_least(text, float, 0))


def port(text: str) -> int:
    """A TCP port to listen on: 1 to 65535."""
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"is a TCP port from 1 to 65535, got {text}")
    return int(value)


def pixel_count(text: str) -> int:
    """A number of pixels, 1 or more; ``5e7`` reads as 50,000,000."""
    value = _number(text, float)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, at least 1, got {text}")
    return int(value)
