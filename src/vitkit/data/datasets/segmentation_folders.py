"""Segmentation sets in the folder layout people keep them in: ``images/`` and ``masks/`` with
matching file stems, either under ``root`` (a seeded share held out) or under ``root/train`` and
``root/val``; ``classes.txt`` or ``classes.json`` in ``root`` names the classes (and colours).

Every pair is checked when the set is read, so a bad file stops the run before training, naming
it: an image without a mask, a mask of another size, a class index the set does not have, an RGB
mask with no colour map.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ...seeds import seed_for
from ..images import is_image_file
from ..masks import IGNORE_INDEX, MaskError, SegmentationClasses, check_mask, read_classes, read_mask
from .splits import hold_out

#: (image file, mask file)
Pair = tuple[Path, Path]


@dataclass(frozen=True)
class SegmentationFiles:
    """The image/mask pairs of a segmentation set, split, and its classes."""

    train: list[Pair]
    val: list[Pair]
    classes: SegmentationClasses


def _pairs(images_dir: Path, masks_dir: Path) -> list[Pair]:
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and is_image_file(p))
    if not images:
        raise MaskError(f"{images_dir} holds no image")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.is_file() and is_image_file(p)}
    pairs = []
    for image in images:
        if image.stem not in masks:
            raise MaskError(
                f"image {image} has no mask: expected {masks_dir / image.stem}.png (a mask per image, same stem)"
            )
        pairs.append((image, masks[image.stem]))
    return pairs


def _checked_classes(root: Path, pairs: list[Pair]) -> SegmentationClasses:
    """The classes ``root`` names, or, when it names none, one per index the masks use (0 to the
    largest, 255 excepted, named by their index); every pair is checked on the way, each mask
    decoded once."""
    named = read_classes(root)
    largest = 0
    for image_path, mask_path in pairs:
        mask = read_mask(mask_path, named)
        with Image.open(image_path) as image:  # the header alone
            size = image.size
        # without named classes every index below 255 is one; their count is known after the pass
        check_mask(mask, mask_path, len(named.names) if named else IGNORE_INDEX, size)
        largest = max(largest, int(mask[mask != IGNORE_INDEX].max(initial=0)))
    return named or SegmentationClasses([str(index) for index in range(largest + 1)])


def load_segmentation_folder(root: Path, *, val_fraction: float, seed: int) -> SegmentationFiles:
    """The pairs under ``root`` (see the module docstring), every one checked."""
    split_dirs = (root / "train", root / "val")
    if all((folder / "images").is_dir() and (folder / "masks").is_dir() for folder in split_dirs):
        train, val = (_pairs(folder / "images", folder / "masks") for folder in split_dirs)
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = _pairs(root / "images", root / "masks")
        train_idx, val_idx = hold_out(len(pairs), val_fraction, random.Random(seed_for(seed)))
        train, val = [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]
    else:
        raise MaskError(
            f"{root} is not a segmentation set: expected {root}/images and {root}/masks (or train/ and val/ "
            "folders each holding images/ and masks/)"
        )
    classes = _checked_classes(root, train + val)
    if len(classes.names) < 2:
        raise MaskError(f"{root}: the masks hold one class; segmentation needs a background and at least one more")
    return SegmentationFiles(train, val, classes)
