"""Seeded hold-out splits for sources that come without a split of their own."""

from __future__ import annotations

import random
from pathlib import Path

from .image_datasets import DataError


def hold_out(
    found: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Per-class seeded split, so every class appears in both parts when it has ≥ 2 images."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    train, val = {}, {}
    for name, paths in found.items():
        shuffled = paths[:]
        rng.shuffle(shuffled)
        cut = min(len(shuffled) - 1, round(len(shuffled) * val_fraction)) if len(shuffled) > 1 else 0
        val[name], train[name] = shuffled[:cut], shuffled[cut:]
    return train, val
