"""Data larger than memory or local disk: WebDataset-style tar shards (the ``webdataset`` library).

``write_shards`` turns any data spec (an ImageFolder, a CSV, digits, MNIST) into
``train-000000.tar, …`` and ``val-000000.tar, …`` of ``shard_size`` samples each — an image
(``.png``/``.jpg``… its file's own bytes) and its class (``.cls``) per sample, the training samples
in a seeded random order so every shard mixes the classes — plus ``shards.json``, written last,
which lists the shards, their sample counts and the class names. Shards can live on any file
system; only the tars being read are open.

``ShardStream`` reads one split as a stream: each process (rank) reads its own round-robin share
of the shards and each data-loader worker its share of those; within that, the shard order and
a shuffle buffer are reseeded every epoch. Nothing is ever held but the buffer.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..fileio import atomic_write, check_out_folder
from ..seeds import SEEDING, seed_for
from .augment import BatchAugment
from .datasets.image_datasets import ArrayImageDataset, DataError, DataSplits, FileImageDataset
from .images import load_image

logger = logging.getLogger(__name__)

MANIFEST = "shards.json"
FORMAT = "vitkit-shards/1"


def _encoded(dataset, index: int) -> tuple[bytes, str, int]:
    """A sample's image as file bytes with their extension, and its label."""
    if isinstance(dataset, FileImageDataset):
        path, label = dataset.samples[index]
        return Path(path).read_bytes(), Path(path).suffix.lower().lstrip(".") or "png", label
    if isinstance(dataset, ArrayImageDataset):
        pixels = dataset.images[index].permute(1, 2, 0).squeeze(-1).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue(), "png", int(dataset.labels[index])
    raise DataError(f"cannot write a {type(dataset).__name__} to shards")


def write_shards(
    data: DataSplits, out: str | Path, *, source: str, shard_size: int = 10_000, seed: int = 0, force: bool = False
) -> dict:
    """Write ``data``'s training and held-out splits (as :func:`vitkit.data.load.load_data` gives
    them for the spec ``source``) as tar shards into ``out``; returns the manifest (also written
    to ``out/shards.json``). The training samples are shuffled once with ``seed``. A folder
    holding other files is refused unless ``force``."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    if data.multi_label:
        raise DataError(f"{source} is multi-label: shards hold one class per image; train from the CSV itself")
    out = Path(out)
    if (out / MANIFEST).exists():
        raise DataError(f"{out} already holds shards ({MANIFEST}); choose another folder")
    check_out_folder(out, own=None, force=force)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, dataset in (("train", data.train), ("val", data.val)):
        order = list(range(len(dataset)))
        if split == "train":
            random.Random(seed).shuffle(order)
        counts: list[int] = []
        # maxsize: cut shards by count only, so the manifest's counts are the files' counts
        writer_options = {"maxcount": shard_size, "maxsize": float("inf"), "verbose": 0}
        with wds.ShardWriter(str(out / f"{split}-%06d.tar"), **writer_options) as writer:
            for index in order:
                try:
                    image, extension, label = _encoded(dataset, index)
                except OSError as error:
                    logger.warning(f"skipping unreadable image: {error}")
                    continue
                if not counts or counts[-1] == shard_size:
                    counts.append(0)
                writer.write({"__key__": f"{split}{sum(counts):09d}", extension: image, "cls": str(label).encode()})
                counts[-1] += 1
        splits[split] = [{"file": f"{split}-{i:06d}.tar", "count": n} for i, n in enumerate(counts)]
    manifest = {
        "format": FORMAT,
        "source": source,
        "class_names": data.class_names,
        "in_chans": data.in_chans,
        "image_size": list(data.image_size) if data.image_size else None,
        "flip_ok": data.flip_ok,
        "splits": splits,
    }
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
    return manifest


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: not a shard folder, or its writing did not finish")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a vitkit shard manifest (format {manifest.get('format')!r})")
    for entries in manifest["splits"].values():
        for entry in entries:
            if not (folder / entry["file"]).is_file():
                raise DataError(f"shard {folder / entry['file']} listed in {path} is missing")
    return manifest


def load_shards(folder: Path, *, in_chans: int | None = None) -> DataSplits:
    """A shard folder as training and held-out streams (``in_chans`` defaults to the source's)."""
    manifest = read_manifest(folder)
    channels = in_chans or manifest["in_chans"]
    return DataSplits(
        train=ShardStream(folder, "train", in_chans=channels),
        val=ShardStream(folder, "val", in_chans=channels),
        class_names=manifest["class_names"],
        in_chans=channels,
        image_size=tuple(manifest["image_size"]) if manifest["image_size"] else None,
        flip_ok=manifest["flip_ok"],
    )


class ShardStream(IterableDataset):
    """One split of a shard folder as ``(image, label)`` samples, for this process's share.

    ``transform`` maps a PIL image to the model input, or, with ``augment``, to a uint8
    image at the training size that the training loop then augments batch by batch on its device
    (:func:`vitkit.data.augment.augment_stream`). ``shuffle_buffer`` > 0 shuffles within a
    buffer of that many samples (and the shard order) with a seed from (seed, epoch, rank, worker).
    Rank ``r`` of ``world_size`` reads shards ``r, r + world_size, …`` of the listed order.
    """

    def __init__(
        self,
        folder: str | Path,
        split: str,
        *,
        transform: Callable | None = None,
        in_chans: int = 3,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: BatchAugment | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.augment = augment
        self.manifest = read_manifest(self.folder)
        self.shards = self.manifest["splits"][split]
        self.split, self.transform, self.in_chans = split, transform, in_chans
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        #: the run's seeding (see vitkit.seeds): a run begun before it resumes with its own order
        self.seeding = SEEDING
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def configured(self, **changes) -> ShardStream:
        """A copy (at the same epoch) with other settings: transform, shuffle_buffer, seed, rank,
        world_size, augment."""
        settings = {
            "transform": self.transform,
            "in_chans": self.in_chans,
            "shuffle_buffer": self.shuffle_buffer,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "augment": self.augment,
        }
        copy = ShardStream(self.folder, self.split, **{**settings, **changes})
        copy.epoch = self.epoch
        return copy

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples in the whole split (all processes)."""
        return sum(entry["count"] for entry in self.shards)

    def batches_per_epoch(self, batch_size: int, workers: int) -> int:
        """Full batches that every process can take per epoch. Each loader worker batches its own
        shards (and drops its own last, partial batch), so this counts per worker."""
        per_rank = []
        for rank in range(self.world_size):
            mine = self.shards[rank :: self.world_size]
            shares = [mine[w :: max(workers, 1)] for w in range(max(workers, 1))]
            per_rank.append(sum(sum(entry["count"] for entry in share) // batch_size for share in shares))
        return min(per_rank)

    def _my_shards(self) -> list[dict]:
        mine = self.shards[self.rank :: self.world_size]
        worker = get_worker_info()
        if worker is not None:
            mine = mine[worker.id :: worker.num_workers]
        return mine

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        worker = get_worker_info()
        keys = (self.seed, self.epoch, self.rank, worker.id if worker else -1)
        rng = random.Random(seed_for(*keys) if self.seeding == SEEDING else hash(keys))
        urls = [str(self.folder / shard["file"]) for shard in self._my_shards()]
        if self.shuffle_buffer:
            rng.shuffle(urls)
        stages: list = [lambda: iter([{"url": url} for url in urls]), wds.tarfile_to_samples()]
        if self.shuffle_buffer:
            # Start yielding once a few samples are in: filling a large buffer first would stall
            # the first steps of every epoch.
            initial = min(self.shuffle_buffer, 1000)
            stages.append(wds.shuffle(self.shuffle_buffer, initial=initial, rng=rng))
        num_classes = len(self.manifest["class_names"])
        for sample in wds.DataPipeline(*stages):
            where = f"{sample.get('__url__')}:{sample['__key__']}"
            try:
                image_key = next(k for k in sample if not k.startswith("__") and k != "cls")
                label = int(sample["cls"])
                if not 0 <= label < num_classes:
                    raise ValueError(f"label {label} is not one of the {num_classes} classes")
                image = load_image(sample[image_key], self.in_chans)
            except (OSError, ValueError, KeyError, StopIteration) as error:  # counted and skipped, as files
                problem = f"no {error}" if isinstance(error, KeyError) else str(error) or "no image"
                logger.warning(f"skipping unusable sample {where}: {problem}")
                yield None, f"{where}: {problem}"
                continue
            yield (self.transform(image) if self.transform else image), label
