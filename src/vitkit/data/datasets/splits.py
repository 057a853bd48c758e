"""The one seeded hold-out, for every source that comes without a split of its own."""

from __future__ import annotations

import random
from typing import TypeVar

from .image_datasets import DataError

T = TypeVar("T")


def check_val_fraction(val_fraction: float) -> None:
    """Raise :class:`DataError` unless ``val_fraction`` is strictly between 0 and 1."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")


def held_out_count(count: int, val_fraction: float, *, at_least_one: bool = True) -> int:
    """How many of ``count`` samples to hold out: ``round(count * val_fraction)``, at least one
    when ``at_least_one``, and never all of them."""
    check_val_fraction(val_fraction)
    wanted = round(count * val_fraction)
    if at_least_one:
        wanted = max(1, wanted)
    return max(0, min(count - 1, wanted))


def hold_out(
    count: int, val_fraction: float, rng: random.Random, *, at_least_one: bool = True
) -> tuple[list[int], list[int]]:
    """Split ``range(count)`` into (training, held-out) indices: ``rng`` shuffles them and the
    first :func:`held_out_count` are held out. Both parts keep the shuffled order."""
    order = list(range(count))
    rng.shuffle(order)
    cut = held_out_count(count, val_fraction, at_least_one=at_least_one)
    return order[cut:], order[:cut]


def hold_out_per_class(
    found: dict[str, list[T]], val_fraction: float, seed: int
) -> tuple[dict[str, list[T]], dict[str, list[T]]]:
    """:func:`hold_out` within each class, so every class with ≥ 2 samples is in both parts; a
    class too small for its share holds none out. One generator runs through the classes in turn."""
    rng = random.Random(seed)
    train, val = {}, {}
    for name, items in found.items():
        train_idx, val_idx = hold_out(len(items), val_fraction, rng, at_least_one=False)
        train[name], val[name] = [items[i] for i in train_idx], [items[i] for i in val_idx]
    return train, val
