"""One entry for every data spec: built-in datasets, image folders, CSV files and shard folders."""

from __future__ import annotations

from pathlib import Path

from .datasets.builtin import BUILTIN, load_digits, load_mnist
from .datasets.csv_files import load_csv
from .datasets.image_datasets import DataError, DataSplits
from .datasets.image_folders import load_image_folder
from .shards import load_shards


def load_data(
    spec: str,
    *,
    in_chans: int | None = 3,
    val_fraction: float = 0.1,
    seed: int = 0,
    labels: bool = True,
    multi_label: bool = False,
) -> DataSplits:
    """Resolve a data spec (``"digits"``, ``"mnist"``, a folder or a ``.csv``) into splits.

    A folder written by ``vitkit shards`` (it has ``shards.json``) is streamed from its tar shards.
    ``in_chans`` applies to files (built-in datasets are grayscale; None: 3, or what the shards
    were written with); ``val_fraction`` and
    ``seed`` define the held-out part when the source has no split of its own. With
    ``labels=False`` (self-supervised pre-training) a folder may also hold its images directly,
    without class sub-folders: they form one class, ``"unlabeled"``. ``multi_label`` reads a
    CSV's labels as label sets even when no row has several (see :func:`load_csv`).
    """
    if spec == "digits":
        return load_digits()
    if spec == "mnist":
        return load_mnist()
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data {spec!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing folder or CSV file"
        )
    if path.is_dir() and (path / "shards.json").is_file():
        return load_shards(path, in_chans=in_chans)
    in_chans = in_chans or 3
    if path.is_dir():
        return load_image_folder(path, in_chans=in_chans, val_fraction=val_fraction, seed=seed, labels=labels)
    if path.suffix.lower() == ".csv":
        return load_csv(path, in_chans=in_chans, val_fraction=val_fraction, seed=seed, multi_label=multi_label)
    raise DataError(f"{path} is a file but not a .csv; give a folder of class sub-folders or a CSV of path,label")
