"""Subsets of a dataset by index or by class: few-label experiments and per-class samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from .image_datasets import ArrayImageDataset, DataError, FileImageDataset


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
