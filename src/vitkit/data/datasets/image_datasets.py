"""The datasets every source returns: in-memory arrays, image files, and the wrappers that
transform or pre-process them; :class:`DataSplits`, :class:`DataError` and the collate that
skips broken files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors

from ...seeds import seed_for
from ..images import load_image

logger = logging.getLogger(__name__)


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
    #: a segmentation set: a sample's label is its mask ``(H, W)`` of class indices, and
    #: ``colours`` gives each class's colour (RGB) in masks and overlays
    colours: list[tuple[int, int, int]] | None = None

    @property
    def segmentation(self) -> bool:
        """Whether a sample's label is a mask (a class per pixel) rather than the image's classes."""
        return self.colours is not None

    def check_image_labels(self, spec: str, what: str) -> DataSplits:
        """These splits, if their labels are per image; a segmentation set is refused, naming ``what``."""
        if self.segmentation:
            raise DataError(f"{spec} is a segmentation set (a class per pixel); {what} needs labels per image")
        return self


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
            logger.warning(f"skipping unreadable image: {error}")
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
