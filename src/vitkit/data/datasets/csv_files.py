"""CSV files of ``path,label`` rows in three forms: one label per image, label sets
(``path,"cat;dog"``) and one 0/1 column per class."""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path

import torch

from .image_datasets import DataError, DataSplits, FileImageDataset, Label
from .image_files import file_splits, readable
from .splits import hold_out, hold_out_per_class

logger = logging.getLogger(__name__)

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
    rows = [(line_no, row) for line_no, row in enumerate(csv.reader(csv_lines(path)), start=1) if row]
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
    train, val = hold_out_per_class(found, val_fraction, seed)
    return file_splits(train, val, in_chans, skipped)


def csv_lines(path: Path) -> list[str]:
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
        logger.warning(
            f"{csv_path}: {merged} duplicate row(s) merged (an image listed more than once is used once, so it is "
            "never both trained on and held out)"
        )
    return list(first.values())


def _listed_image(csv_path: Path, line_no: int, cell: str, skipped: list[str]) -> Path | None:
    """The image a CSV row names, or None (with a warning) when it is missing or unreadable."""
    image_path = _image_path(csv_path, cell)
    if not image_path.is_file():
        logger.warning(f"skipping missing image {image_path} ({csv_path}, line {line_no})")
        skipped.append(str(image_path))
        return None
    return image_path if readable(image_path, skipped) else None


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
    # one split of all images: a per-class split is not defined when an image has several classes
    train_idx, val_idx = hold_out(len(samples), val_fraction, random.Random(seed))
    train, val = [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]
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
