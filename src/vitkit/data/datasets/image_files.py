"""Image files as samples, shared by image folders and CSV files: the scan-time readability
check and the splits of files grouped by class."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from .image_datasets import DataSplits, FileImageDataset

logger = logging.getLogger(__name__)


def readable(path: Path, skipped: list[str]) -> bool:
    """Cheap check at scan time (header only); truncated files are caught when decoded."""
    try:
        with Image.open(path):
            return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        logger.warning(f"skipping unreadable image {path}: {error}")
        skipped.append(str(path))
        return False


def _samples(found: dict[str, list[Path]], class_names: list[str]) -> list[tuple[Path, int]]:
    index = {name: i for i, name in enumerate(class_names)}
    return [(path, index[name]) for name, paths in found.items() for path in paths]


def file_splits(
    train: dict[str, list[Path]], val: dict[str, list[Path]], in_chans: int, skipped: list[str]
) -> DataSplits:
    """File datasets from image paths grouped by class name; the classes are the sorted names."""
    class_names = sorted(train)
    return DataSplits(
        train=FileImageDataset(_samples(train, class_names), in_chans),
        val=FileImageDataset(_samples(val, class_names), in_chans),
        class_names=class_names,
        in_chans=in_chans,
        image_size=None,
        flip_ok=True,
        skipped=skipped,
    )
