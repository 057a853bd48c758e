"""Image files decoded once: a folder or CSV dataset turned into one memory-mapped uint8 array at
the training size, so that training reads it as in-memory data (batched, augmented on the device)
instead of decoding every file in every epoch.

Each image's short side is resized to the size (antialiased) and the centre square is kept — the
evaluation geometry — so random crops are then taken from that square. A segmentation set's masks
take the same geometry (nearest neighbour, so every pixel keeps a class index), cached as one more
channel beside their image's. The cache lives in
``$VITKIT_HOME/decoded/`` under a key made of the size, the channel count and every file's path,
size and modification time: a changed, added or removed file gives another key, so a stale cache is
never read. Writes are atomic (a killed decode leaves no half-written cache).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..fileio import atomic_write, cache_dir
from ..models.config import to_pair
from .datasets.image_datasets import ArrayImageDataset, FileImageDataset, stack_labels
from .datasets.segmentation_files import MaskFileDataset
from .transforms import ResizeCrop, decode_transform

#: files to decode: images with labels, or images with masks
Files = FileImageDataset | MaskFileDataset

logger = logging.getLogger(__name__)


class _DecodeAtSize(Dataset):
    """Each file as uint8 ``(C, size, size)`` (a mask as a last channel more), or ``(None, error)``
    if it cannot be read."""

    def __init__(self, files: Files, size: int) -> None:
        self.files = files
        self.transform = decode_transform(size, files.in_chans)
        self.mask_transform = ResizeCrop(to_pair(size))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str]:
        try:
            image, label = self.files[index]
        except OSError as error:
            return None, str(error)
        decoded = self.transform(image).as_subclass(torch.Tensor)
        if isinstance(self.files, MaskFileDataset):
            decoded = torch.cat([decoded, self._mask(label)[None]])
        return decoded, ""

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask with its image's geometry: resized by nearest neighbour at pixel centres (as
        the antialiased image resize places them), then the same crop."""
        crop = self.mask_transform
        height, width = crop.resized_size(*mask.shape)
        top, left = crop.crop_offsets(height, width)
        resized = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest-exact")[0, 0]
        return resized[top : top + crop.size[0], left : left + crop.size[1]].to(torch.uint8)


def _stat(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _key(files: Files, size: int) -> str:
    entries = []
    for path, label in files.samples:
        if isinstance(label, Path):  # a mask file
            entries.append(_stat(Path(path)) + _stat(label))
        else:
            label_value = label if isinstance(label, int) else label.tolist()  # multi-hot: a list in JSON
            entries.append([*_stat(Path(path)), label_value])
    document = {"format": 1, "size": size, "in_chans": files.in_chans, "files": entries}
    if isinstance(files, MaskFileDataset):  # RGB masks become indices through the colour map
        document["classes"] = [files.classes.names, files.classes.colours]
    text = json.dumps(document)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def decoded(
    files: Files,
    size: int,
    *,
    workers: int = 0,
    progress: bool = True,
    skipped: list[str] | None = None,
) -> ArrayImageDataset:
    """``files`` as an in-memory dataset of uint8 images ``(N, C, size, size)`` (with masks
    ``(N, size, size)`` as labels for a segmentation set) backed by a memory-mapped cache file
    (decoded now, with ``workers`` loader processes, or read from an earlier run). Unreadable
    files are left out with a warning naming each, and their messages
    are appended to ``skipped``. A disk too full for the cache is an ``OSError`` saying so,
    raised before any image is decoded."""
    folder = cache_dir() / "decoded"
    key = _key(files, size)
    images_path, index_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not (images_path.is_file() and index_path.is_file()):
        _decode(files, size, images_path, index_path, workers=workers, progress=progress)
    index = json.loads(index_path.read_text())
    kept = index["kept"]
    for message in index["broken"]:
        logger.warning(f"skipping unreadable image: {message}")
    if skipped is not None:
        skipped += index["broken"]
    # Copy-on-write mapping: pages are read from the file as batches need them, and nothing a
    # caller might do to the tensor can change the cache.
    images = torch.from_numpy(np.load(images_path, mmap_mode="c"))
    if isinstance(files, MaskFileDataset):
        return ArrayImageDataset(images[:, : files.in_chans], images[:, files.in_chans])
    return ArrayImageDataset(images, stack_labels([files.samples[i][1] for i in kept]))


def _decode(files: Files, size: int, images_path: Path, index_path: Path, *, workers: int, progress: bool) -> None:
    # Its own generator: an iterator of a loader without one draws from the global generator, so a
    # run that decodes would initialise and drop out otherwise than the same run reading the cache.
    loader = DataLoader(_DecodeAtSize(files, size), batch_size=None, num_workers=workers, generator=torch.Generator())
    kept, broken = [], []
    full = images_path.with_suffix(".all.npy")

    def write_images(tmp: Path) -> None:
        shape = (len(files), files.in_chans + isinstance(files, MaskFileDataset), size, size)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(tmp)
        bar = tqdm(loader, total=len(files), disable=not progress, unit="img", desc=f"decoding once at {size} px")
        for index, (image, error) in enumerate(bar):
            if image is None:
                broken.append(error)
                continue
            array[len(kept)] = image.numpy()
            kept.append(index)
        array.flush()

    atomic_write(full, write_images)
    try:
        if broken:  # keep only the readable images, so that the array and the labels line up

            def write_kept(tmp: Path) -> None:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.load(full, mmap_mode="r")[: len(kept)])

            atomic_write(images_path, write_kept)
        else:
            full.replace(images_path)
    finally:
        full.unlink(missing_ok=True)
    text = json.dumps({"kept": kept, "broken": broken})
    atomic_write(index_path, lambda tmp: tmp.write_text(text))


def _reserve(path: Path) -> None:
    """Allocate the whole (sparse) memory-mapped file on disk now: writing a page the disk has no
    room for would otherwise kill the process with SIGBUS midway instead of raising an error."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise OSError(
                error.errno,
                f"no room for the decoded images ({size / 2**20:.1f} MiB) in {path.parent}: free some space, or "
                "point VITKIT_HOME at a disk with room (or read the files each epoch: --no-cache-decoded)",
            ) from None
