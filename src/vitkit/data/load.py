"""One entry for every data spec: built-in datasets, image folders, CSV files and shard folders."""

from __future__ import annotations

from pathlib import Path

from .datasets.builtin import BUILTIN, load_digits, load_mnist, load_mnist_canvases
from .datasets.csv_files import load_csv
from .datasets.image_datasets import DataError, DataSplits
from .datasets.image_folders import load_image_folder
from .datasets.segmentation_files import (
    is_segmentation_csv,
    is_segmentation_folder,
    load_segmentation_csv,
    load_segmentation_folder,
    segmentation_splits,
)
from .masks import IGNORE_INDEX
from .shards import load_shards

#: what a data spec may hold: ``auto`` tells them apart by their layout
TASKS = ("auto", "classification", "segmentation")


def load_data(
    spec: str,
    *,
    in_chans: int | None = 3,
    val_fraction: float = 0.1,
    seed: int = 0,
    labels: bool = True,
    multi_label: bool = False,
    task: str = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> DataSplits:
    """Resolve a data spec (``"digits"``, ``"mnist"``, a folder or a ``.csv``) into splits.

    A folder written by ``vitkit shards`` (it has ``shards.json``) is streamed from its tar shards.
    ``in_chans`` applies to files (built-in datasets are grayscale; None: 3, or what the shards
    were written with); ``val_fraction`` and
    ``seed`` define the held-out part when the source has no split of its own. With
    ``labels=False`` (self-supervised pre-training) a folder may also hold its images directly,
    without class sub-folders: they form one class, ``"unlabeled"``. ``multi_label`` reads a
    CSV's labels as label sets even when no row has several (see :func:`load_csv`).

    ``task`` "auto" is :func:`detect_task`'s answer; "segmentation" insists on a segmentation set
    (masks as labels), and "classification" reads a folder's sub-folders as classes whatever their
    names; a segmentation set's mask values ``ignore_index`` count for nothing.
    """
    task = detect_task(spec) if task == "auto" else task
    if task == "segmentation":
        return _load_segmentation(spec, in_chans or 3, val_fraction, seed, ignore_index)
    if spec == "digits":
        return load_digits()
    if spec == "mnist":
        return load_mnist()
    path = _existing(spec)
    if path.is_dir() and (path / "shards.json").is_file():
        return load_shards(path, in_chans=in_chans)
    in_chans = in_chans or 3
    if path.is_dir():
        return load_image_folder(path, in_chans=in_chans, val_fraction=val_fraction, seed=seed, labels=labels)
    if path.suffix.lower() == ".csv":
        return load_csv(path, in_chans=in_chans, val_fraction=val_fraction, seed=seed, multi_label=multi_label)
    raise DataError(f"{path} is a file but not a .csv; give a folder of class sub-folders or a CSV of path,label")


def detect_task(spec: str) -> str:
    """What a data spec holds, from its layout alone: "segmentation" for ``mnist-canvases``, a
    folder with ``images/`` and ``masks/`` (at its top or under ``train/`` and ``val/``) and a CSV
    with an ``image,mask`` header; else "classification"."""
    path = Path(spec).expanduser()
    if spec == "mnist-canvases" or (path.is_dir() and is_segmentation_folder(path)):
        return "segmentation"
    if path.is_file() and path.suffix.lower() == ".csv" and is_segmentation_csv(path):
        return "segmentation"
    return "classification"


def _existing(spec: str) -> Path:
    if spec == "mnist-canvases":
        raise DataError(f"{spec} is a segmentation set; train a segmenter on it (drop --task classification)")
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data {spec!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing folder or CSV file"
        )
    return path


def _load_segmentation(spec: str, in_chans: int, val_fraction: float, seed: int, ignore_index: int) -> DataSplits:
    if spec == "mnist-canvases":
        return load_mnist_canvases()
    if spec in BUILTIN:
        raise DataError(f"{spec} is a classification set; the built-in segmentation set is mnist-canvases")
    path = _existing(spec)
    split = {"val_fraction": val_fraction, "seed": seed, "ignore_index": ignore_index}
    if path.is_dir():
        return segmentation_splits(load_segmentation_folder(path, **split), in_chans)
    if path.suffix.lower() == ".csv":
        return segmentation_splits(load_segmentation_csv(path, **split), in_chans)
    raise DataError(f"{path} is a file but not a .csv; a segmentation set is a folder (images/ + masks/) or a CSV")
