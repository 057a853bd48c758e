"""What a run feeds its model: the training and held-out sets with their transforms, the order of
each epoch, and the loaders that batch them.

Exact resumption rests on the order of epoch ``e`` being a permutation drawn from (seed, e) and
each sample's augmentation being drawn from (seed, e, index), so a resumed epoch continues with
the very images, augmented the same way, that the uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import signal
from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.augment import (
    AugmentedBatches,
    AugmentedMaskBatches,
    BatchAugment,
    augment_stream,
    resize_masks,
    resize_uint8,
)
from ..data.datasets.image_datasets import (
    ArrayImageDataset,
    DataSplits,
    FileImageDataset,
    TransformedDataset,
    collate_skipping_broken,
    preprocess_in_memory,
)
from ..data.datasets.segmentation_files import MaskFileDataset
from ..data.decoded import decoded
from ..data.shards import ShardStream
from ..data.transforms import decode_transform, eval_transform, train_transform
from ..seeds import SEEDING, seed_for
from . import distributed
from .config import ConfigError, TrainConfig
from .distributed import Processes
from .memory import device_memory_bytes

#: images per batch of the held-out evaluation
EVAL_BATCH = 256


def image_size(config: TrainConfig, data: DataSplits, stride: int) -> int:
    """The configured size, else the data's native size rounded up to a multiple of the patch."""
    if config.img_size:
        return config.img_size
    if data.image_size is None:
        return 224
    return math.ceil(max(data.image_size) / stride) * stride


#: the share of the machine's memory decoded images may take when ``cache_decoded`` is left to vitkit
DECODED_MEMORY_SHARE = 0.25


def decode_once(config: TrainConfig, data: DataSplits, img_size: int, processes: Processes) -> DataSplits:
    """The data's image files as memory-mapped uint8 arrays at ``img_size`` (see
    :mod:`vitkit.data.decoded`), when ``cache_decoded`` says so or, left unset, when they take at
    most :data:`DECODED_MEMORY_SHARE` of the machine's memory; always for a segmentation set (its
    images and masks are augmented together, as whole batches). Rank 0 decodes, the other
    processes then read its cache. Otherwise the data as it is.

    Decoding once is the default because decoding files every epoch starves a small model (the
    loader's share of the training time is each run's ``data_wait_fraction``)."""
    if isinstance(data.train, ShardStream):
        if config.cache_decoded:
            raise ConfigError("--cache-decoded is for image folders and CSVs; shards are streamed, not cached")
        return data
    if not isinstance(data.train, FileImageDataset | MaskFileDataset):
        return data  # already in memory
    if config.cache_decoded is False and not data.segmentation:
        return data
    if config.cache_decoded is None and not data.segmentation:
        decoded_bytes = (len(data.train) + len(data.val)) * data.in_chans * img_size**2
        if decoded_bytes > DECODED_MEMORY_SHARE * device_memory_bytes(torch.device("cpu")):
            return data
    if processes.distributed and not processes.is_main:
        torch.distributed.barrier()  # until rank 0 has written the cache
    skipped = list(data.skipped)  # files found unreadable when decoded count as skipped too
    splits = {
        split: decoded(files, img_size, workers=config.workers, progress=processes.is_main, skipped=skipped)
        for split, files in (("train", data.train), ("val", data.val))
    }
    if processes.distributed and processes.is_main:
        torch.distributed.barrier()
    return dataclasses.replace(data, **splits, skipped=skipped)


def run_datasets(
    config: TrainConfig, data: DataSplits, img_size: int, processes: Processes
) -> tuple[Dataset | AugmentedBatches, Dataset]:
    """Training and held-out sets with their transforms. In-memory data (built-in, or decoded
    once) is augmented as whole batches (:class:`AugmentedBatches`), and so are shard streams,
    whose loader workers then only decode at the training size; with ``batch_augment`` off, and
    for image files, each image is augmented in the loader. Shards are split between the
    processes. The held-out set is preprocessed once when it is in memory."""
    evaluation = eval_transform(img_size, data.in_chans)
    if data.segmentation:
        return _segmentation_datasets(config, data, img_size)
    batched = config.batch_augment
    if batched is None:
        batched = isinstance(data.train, ArrayImageDataset | ShardStream)
    elif batched and isinstance(data.train, FileImageDataset):
        raise ConfigError(
            f"--batch-augment needs training images in memory or in shards; {config.data} is read from files: "
            "add --cache-decoded to decode them once, or drop --batch-augment to augment each image in the loader"
        )
    if isinstance(data.train, ShardStream):
        share = {"rank": processes.rank, "world_size": processes.world_size}
        if batched:  # the workers decode at the training size; whole batches are augmented on the device
            per_image, augment = decode_transform(img_size, data.in_chans), build_batch_augment(config, data, img_size)
        else:
            per_image, augment = _per_image_augment(config, data, img_size) or evaluation, None
        train_stream = data.train.configured(
            transform=per_image,
            augment=augment,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            **share,
        )
        return train_stream, data.val.configured(transform=evaluation, **share)
    val_set = preprocess_in_memory(data.val, evaluation) or TransformedDataset(data.val, evaluation)
    if batched:
        images = resize_uint8(data.train.images, img_size)
        return AugmentedBatches(
            images, data.train.labels, build_batch_augment(config, data, img_size), config.seed
        ), val_set
    augment = _per_image_augment(config, data, img_size)
    if augment is not None:
        return TransformedDataset(data.train, augment, seed=config.seed), val_set
    return preprocess_in_memory(data.train, evaluation) or TransformedDataset(data.train, evaluation), val_set


def _segmentation_datasets(
    config: TrainConfig, data: DataSplits, img_size: int
) -> tuple[AugmentedMaskBatches, Dataset]:
    """A segmentation set in memory (built-in, or decoded once) at the training size, masks resized
    with their images (nearest neighbour): the training set augmented as whole batches, each mask
    moved with its image, and the held-out set preprocessed once."""
    train, val = data.train, data.val
    assert isinstance(train, ArrayImageDataset) and isinstance(val, ArrayImageDataset)  # see decode_once
    augment = build_batch_augment(config, data, img_size)
    train_set = AugmentedMaskBatches(
        resize_uint8(train.images, img_size),
        resize_masks(train.labels, img_size),
        augment,
        config.seed,
        config.ignore_index,
    )
    val = ArrayImageDataset(resize_uint8(val.images, img_size), resize_masks(val.labels, img_size))
    evaluation = eval_transform(img_size, data.in_chans)  # the images are at its size: it only scales them
    return train_set, preprocess_in_memory(val, evaluation) or TransformedDataset(val, evaluation)


def _flip(config: TrainConfig, data: DataSplits) -> bool:
    return data.flip_ok if config.flip is None else config.flip


def build_batch_augment(config: TrainConfig, data: DataSplits, img_size: int) -> BatchAugment:
    """The config's augmentation, for whole batches."""
    return BatchAugment(
        img_size,
        crop_scale=tuple(config.crop_scale) if config.crop_scale else None,
        rotate=config.rotate,
        translate=config.translate,
        shear=config.shear,
        zoom=tuple(config.zoom) if config.zoom else (1.0, 1.0),
        flip=_flip(config, data),
        colour_ops=2 if config.randaugment is not None else 0,
        magnitude=config.randaugment or 0,
        erase=config.erase,
    )


def _per_image_augment(config: TrainConfig, data: DataSplits, img_size: int) -> Callable | None:
    """The config's augmentation, per image; None if it asks for none."""
    flip = _flip(config, data)
    geometric = config.rotate or config.translate or config.shear or config.zoom
    if not (config.crop_scale or flip or config.randaugment is not None or geometric or config.erase):
        return None
    return train_transform(
        img_size,
        data.in_chans,
        crop_scale=tuple(config.crop_scale or (1.0, 1.0)),
        flip=flip,
        randaugment=config.randaugment,
        rotate=config.rotate,
        translate=config.translate,
        shear=config.shear,
        zoom=tuple(config.zoom) if config.zoom else None,
        erase=config.erase,
    )


def check_shares(config: TrainConfig, processes: Processes, train_set: Dataset, val_set: Dataset) -> None:
    """Every process (and every loader worker of a stream) needs data of its own."""
    if isinstance(train_set, ShardStream):
        readers = processes.world_size * max(config.workers, 1)
        for split, stream, needed in (("train", train_set, readers), ("val", val_set, processes.world_size)):
            if len(stream.shards) < needed:
                raise ConfigError(
                    f"{config.data} has {len(stream.shards)} {split} shard(s) for {needed} readers (processes × "
                    "workers): every reader needs at least one; write smaller shards (vitkit shards --shard-size)"
                )
    elif len(val_set) < processes.world_size:
        raise ConfigError(f"{len(val_set)} held-out image(s) cannot be shared by {processes.world_size} processes")


def steps_per_epoch(config: TrainConfig, processes: Processes, train_set: Dataset) -> int:
    """Optimiser steps in an epoch; every process takes as many micro-batches (or DDP would wait forever)."""
    if isinstance(train_set, ShardStream):
        micro_per_epoch = train_set.batches_per_epoch(config.batch_size, config.workers)
    else:
        micro_per_epoch = len(train_set) // (config.batch_size * processes.world_size)
    steps = micro_per_epoch // config.accum_steps
    if steps == 0:
        raise ConfigError(
            f"the training set has {len(train_set)} images, fewer than one global batch of "
            f"{config.global_batch(processes.world_size)} (batch_size × accum_steps × {processes.world_size} "
            "processes); lower batch_size or accum_steps"
        )
    return steps


def _ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which stops at a step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    indices: list[int] | None,
    workers: int,
    device: torch.device,
    drop_last: bool = True,
    batches: list[list[int]] | None = None,
) -> DataLoader:
    """Batches ``(images, labels, broken)`` of ``indices`` in order (or of the whole stream), or
    exactly the given ``batches``."""
    common = {
        "num_workers": workers,
        "collate_fn": collate_skipping_broken,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": _ignore_interrupts,
    }
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        shuffle=False,
        drop_last=drop_last and (indices is not None or isinstance(dataset, ShardStream)),
        # Its own generator: creating an iterator must not draw from the global one, or a
        # resumed run's dropout would see other numbers than the uninterrupted run's.
        generator=torch.Generator().manual_seed(0),
        **common,
    )


def epoch_order(size: int, seed: int, epoch: int, seeding: int = SEEDING) -> list[int]:
    """The sample order of epoch ``epoch``: a permutation drawn from (seed, epoch) alone
    (``seeding`` 1: as runs begun before :func:`vitkit.seeds.seed_for` drew it)."""
    generator = torch.Generator().manual_seed(seed_for(seed, epoch) if seeding == SEEDING else seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def epoch_batches(
    config: TrainConfig,
    train_set: Dataset,
    *,
    epoch: int,
    images_done: int,
    seeding: int,
    steps: int,
    processes: Processes,
    device: torch.device,
) -> Iterable:
    """This process's micro-batches of epoch ``epoch`` from image ``images_done`` on (all
    processes together), ``steps`` optimiser steps' worth; micro-batches that would not complete
    a step are left out."""
    if isinstance(train_set, (TransformedDataset, ShardStream, AugmentedBatches)):
        train_set.set_epoch(epoch)
    if isinstance(train_set, ShardStream):  # each process reads its own shards
        train_set.seeding = seeding
        done = images_done // (config.batch_size * processes.world_size)
        stream = make_loader(
            train_set, batch_size=config.batch_size, indices=None, workers=config.workers, device=device
        )
        batches = itertools.islice(stream, done, steps * config.accum_steps)
        if train_set.augment is None:
            return batches
        key = (config.seed, epoch, processes.rank)
        return augment_stream(batches, train_set.augment, key=key, device=device, first=done)
    order = epoch_order(len(train_set), config.seed, epoch, seeding)
    usable = steps * config.global_batch(processes.world_size)
    mine = distributed.rank_batches(order[images_done:usable], config.batch_size, processes)
    if isinstance(train_set, AugmentedBatches):
        return train_set.batches(mine, config.batch_size, device)
    return make_loader(train_set, batch_size=config.batch_size, indices=mine, workers=config.workers, device=device)


def held_out_batches(dataset: Dataset, processes: Processes, *, workers: int, device: torch.device) -> DataLoader:
    """Batches of this process's share of the held-out set. Each process scores every
    world_size-th image and the sums are added later, so every image counts exactly once, with no
    padding, whatever the number of processes."""
    if not processes.distributed or isinstance(dataset, ShardStream):  # a stream holds its share already
        return make_loader(
            dataset, batch_size=EVAL_BATCH, indices=None, workers=workers, device=device, drop_last=False
        )
    mine = torch.arange(processes.rank, len(dataset), processes.world_size)
    # The same number of batches in every process: sharded forwards are collective.
    count = math.ceil(math.ceil(len(dataset) / processes.world_size) / EVAL_BATCH)
    batches = [chunk.tolist() for chunk in mine.tensor_split(count) if len(chunk)]
    return make_loader(dataset, batch_size=EVAL_BATCH, indices=None, workers=workers, device=device, batches=batches)
