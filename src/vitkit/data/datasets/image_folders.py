"""Image folders in ImageFolder layout: ``root/train/<class>/*`` with ``root/val/<class>/*`` (or
``test/``), or ``root/<class>/*`` with a seeded, per-class held-out fraction."""

from __future__ import annotations

from pathlib import Path

from ..images import IMAGE_EXTENSIONS, is_image_file
from .image_datasets import DataError, DataSplits
from .image_files import file_splits, readable
from .splits import hold_out_per_class

#: the one "class" of a folder of images without labels (self-supervised pre-training)
UNLABELED = "unlabeled"


def _scan_class_folders(root: Path, skipped: list[str], labels: bool = True) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes and not labels:  # a flat folder of images is fine when labels are not needed
        files = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
        if files:
            return {UNLABELED: [p for p in files if readable(p, skipped)]}
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class name>/<image files>")
    found: dict[str, list[Path]] = {}
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        found[folder.name] = [p for p in files if readable(p, skipped)]
    if not any(found.values()):
        raise DataError(
            f"no readable image in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} in its class folders)"
        )
    empty = [name for name, paths in found.items() if not paths]
    if labels and empty:
        raise DataError(
            f"class folder {root / empty[0]} holds no readable image; add images or remove the folder "
            "(an empty folder would still become a class the model must predict)"
        )
    return found


def load_image_folder(root: Path, *, in_chans: int, val_fraction: float, seed: int, labels: bool = True) -> DataSplits:
    """The images under ``root``: its ``train/`` and ``val/`` (``valid/``, ``validation/``, ``test/``)
    class folders when it has both, else its class folders with a seeded ``val_fraction`` of each
    class held out. With ``labels=False`` a flat folder of images is one class, ``"unlabeled"``."""
    skipped: list[str] = []
    val_dir = next((root / n for n in ("val", "valid", "validation", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train = _scan_class_folders(root / "train", skipped, labels)
        val = _scan_class_folders(val_dir, skipped, labels)
        if sorted(train) != sorted(val):
            only_train = sorted(set(train) - set(val))
            only_val = sorted(set(val) - set(train))
            raise DataError(
                f"the classes of {root / 'train'} and {val_dir} differ: only in train {only_train}, "
                f"only in {val_dir.name} {only_val}; give both folders the same class sub-folders"
            )
    else:
        train, val = hold_out_per_class(_scan_class_folders(root, skipped, labels), val_fraction, seed)
    return file_splits(train, val, in_chans, skipped)
