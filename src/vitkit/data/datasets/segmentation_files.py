"""Segmentation sets in the layouts people keep them in: ``images/`` and ``masks/`` with matching
file stems, either under ``root`` (a seeded share held out) or under ``root/train`` and
``root/val``; or a CSV of ``image,mask`` rows (paths relative to the CSV, a seeded share held out).
``classes.txt`` or ``classes.json`` beside them names the classes (and colours).

Every pair is checked when the set is read, so a bad file stops the run before training, naming
it: an image without a mask, two images for one mask, a mask of another size, a class index the set
does not have, an RGB mask with no colour map. A mask labels the image as it is shown: upright, as
its EXIF orientation (phone photos) says.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset

from ...seeds import seed_for
from ..images import is_image_file, load_image
from ..masks import IGNORE_INDEX, MaskError, SegmentationClasses, check_mask, read_classes, read_mask
from .csv_files import csv_lines
from .image_datasets import DataSplits
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
    pairs, seen = [], {}
    for image in images:
        if image.stem in seen:
            raise MaskError(f"images {seen[image.stem]} and {image} share the stem of one mask; rename one of them")
        seen[image.stem] = image
        if image.stem not in masks:
            raise MaskError(
                f"image {image} has no mask: expected {masks_dir / image.stem}.png (a mask per image, same stem)"
            )
        pairs.append((image, masks[image.stem]))
    return pairs


def _upright_size(path: Path) -> tuple[int, int]:
    """An image's (width, height) as shown, from its header: EXIF orientations 5-8 turn it a quarter."""
    with Image.open(path) as image:
        turned = image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
        return (image.height, image.width) if turned else image.size


def _checked_classes(root: Path, pairs: list[Pair], ignore_index: int) -> SegmentationClasses:
    """The classes ``root`` names, or, when it names none, one per index the masks use (0 to the
    largest, ``ignore_index`` excepted, named by their index); every pair is checked on the way,
    each mask decoded once."""
    named = read_classes(root)
    largest = 0
    for image_path, mask_path in pairs:
        mask = read_mask(mask_path, named)
        # without named classes every index below 255 is one; their count is known after the pass
        count = len(named.names) if named else IGNORE_INDEX
        check_mask(mask, mask_path, count, _upright_size(image_path), ignore_index)
        largest = max(largest, int(mask[mask != ignore_index].max(initial=0)))
    return named or SegmentationClasses([str(index) for index in range(largest + 1)])


def is_segmentation_folder(root: Path) -> bool:
    """Whether ``root`` is laid out as a segmentation set (``images/`` + ``masks/``, at its top or
    under ``train/`` and ``val/``)."""
    return any((folder / "images").is_dir() and (folder / "masks").is_dir() for folder in (root, root / "train"))


def is_segmentation_csv(path: Path) -> bool:
    """Whether the CSV ``path`` lists ``image,mask`` pairs (its header says so)."""
    first = next(csv.reader(csv_lines(path)[:1]), [])
    return [cell.strip().lower() for cell in first[:2]] == ["image", "mask"]


def _split(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    train_idx, val_idx = hold_out(len(pairs), val_fraction, random.Random(seed_for(seed)))
    return [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]


def _with_classes(root: Path, train: list[Pair], val: list[Pair], ignore_index: int) -> SegmentationFiles:
    classes = _checked_classes(root, train + val, ignore_index)
    if len(classes.names) < 2:
        raise MaskError(f"{root}: the masks hold one class; segmentation needs a background and at least one more")
    return SegmentationFiles(train, val, classes)


def load_segmentation_csv(
    path: Path, *, val_fraction: float, seed: int, ignore_index: int = IGNORE_INDEX
) -> SegmentationFiles:
    """The pairs a CSV with an ``image,mask`` header lists (paths relative to its folder, whose
    ``classes.txt``/``classes.json`` names the classes), every one checked (mask values
    ``ignore_index`` count for nothing); a seeded ``val_fraction`` is held out. An image listed
    twice is an error naming both lines: it could land in both parts."""
    pairs, lines = [], {}
    for line_no, row in enumerate(csv.reader(csv_lines(path)[1:]), start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise MaskError(f"{path}, line {line_no}: expected image,mask, got {row!r}")
        image, mask = (
            Path(cell.strip()) if Path(cell.strip()).is_absolute() else path.parent / cell.strip() for cell in row
        )
        for what, file in (("image", image), ("mask", mask)):
            if not file.is_file():
                raise MaskError(f"{path}, line {line_no}: the {what} {file} does not exist")
        if image.resolve() in lines:
            raise MaskError(f"{path}, lines {lines[image.resolve()]} and {line_no} both list {image}; keep one row")
        lines[image.resolve()] = line_no
        pairs.append((image, mask))
    if len(pairs) < 2:
        raise MaskError(f"{path} lists {len(pairs)} image,mask pair(s); a training and a held-out set need two or more")
    return _with_classes(path.parent, *_split(pairs, val_fraction, seed), ignore_index)


def load_segmentation_folder(
    root: Path, *, val_fraction: float, seed: int, ignore_index: int = IGNORE_INDEX
) -> SegmentationFiles:
    """The pairs under ``root`` (see the module docstring), every one checked (mask values
    ``ignore_index`` count for nothing)."""
    split_dirs = (root / "train", root / "val")
    if all((folder / "images").is_dir() and (folder / "masks").is_dir() for folder in split_dirs):
        train, val = (_pairs(folder / "images", folder / "masks") for folder in split_dirs)
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        train, val = _split(_pairs(root / "images", root / "masks"), val_fraction, seed)
    else:
        raise MaskError(
            f"{root} is not a segmentation set: expected {root}/images and {root}/masks (or train/ and val/ "
            "folders each holding images/ and masks/)"
        )
    return _with_classes(root, train, val, ignore_index)


class MaskFileDataset(Dataset):
    """Image/mask file pairs: each sample is the image (converted to ``in_chans`` channels) and its
    mask ``(H, W)`` uint8 of class indices."""

    def __init__(self, pairs: list[Pair], in_chans: int, classes: SegmentationClasses) -> None:
        self.samples, self.in_chans, self.classes = pairs, in_chans, classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        return load_image(image_path, self.in_chans), torch.from_numpy(read_mask(mask_path, self.classes))


def segmentation_splits(files: SegmentationFiles, in_chans: int) -> DataSplits:
    """The splits of a segmentation set read from files (masks as labels)."""
    return DataSplits(
        train=MaskFileDataset(files.train, in_chans, files.classes),
        val=MaskFileDataset(files.val, in_chans, files.classes),
        class_names=files.classes.names,
        in_chans=in_chans,
        image_size=None,
        flip_ok=True,
        colours=files.classes.palette(),
    )
