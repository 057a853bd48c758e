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


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return int(value)


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return float(value)


def nonnegative_float(text: str) -> float:
    """A finite number, 0 or more."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return float(value)


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
