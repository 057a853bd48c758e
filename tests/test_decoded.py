"""Image folders decoded once into a memory-mapped cache, renewed when a file changes."""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import digits_config, logged
from vitkit.data.augment import AugmentedBatches
from vitkit.data.datasets.builtin import load_digits
from vitkit.data.datasets.image_datasets import ArrayImageDataset, FileImageDataset
from vitkit.data.decoded import decoded
from vitkit.data.load import load_data
from vitkit.data.shards import write_shards
from vitkit.data.transforms import eval_transform
from vitkit.train import ConfigError, inputs, train
from vitkit.train.distributed import Processes
from vitkit.train.inputs import decode_once, run_datasets


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "decoded"


def _digit_folder(root: Path, per_class: int = 12) -> Path:
    """Real digits as RGB PNGs of 20×14 px (not square, so resizing and cropping both act)."""
    digits = load_digits().train
    for label in range(3):
        (root / str(label)).mkdir(parents=True)
        members = (digits.labels == label).nonzero().flatten()[:per_class]
        for i, index in enumerate(members.tolist()):
            gray = Image.fromarray(digits.images[index, 0].numpy()).resize((14, 20))
            gray.convert("RGB").save(root / str(label) / f"{i}.png")
    return root


def test_a_folder_is_decoded_once_at_the_training_size(tmp_path, cache, caplog):
    folder = _digit_folder(tmp_path / "digits")
    whole = (folder / "1" / "0.png").read_bytes()
    (folder / "1" / "broken.png").write_bytes(whole[: len(whole) // 2])  # a readable header, then nothing
    data = load_data(str(folder), in_chans=3, val_fraction=0.25, seed=0)
    with logged(caplog, "broken.png"):
        train_set = decoded(data.train, 8, progress=False)
    assert isinstance(train_set, ArrayImageDataset)
    assert train_set.images.dtype == torch.uint8 and train_set.images.shape[1:] == (3, 8, 8)
    readable = [(path, label) for path, label in data.train.samples if path.name != "broken.png"]
    assert train_set.labels.tolist() == [label for _, label in readable]
    # Pixel for pixel what evaluation's preprocessing makes of the same file, before scaling to [-1, 1].
    evaluation = eval_transform(8, 3)
    for row, (path, _) in enumerate(readable[:5]):
        expected = evaluation(Image.open(path).convert("RGB"))
        torch.testing.assert_close((train_set.images[row].float() / 255 - 0.5) / 0.5, expected, atol=1e-6, rtol=0)
    assert len(list(cache.glob("*.npy"))) == 1


def test_the_cache_is_reused_and_renewed_when_a_file_changes(tmp_path, cache):
    folder = _digit_folder(tmp_path / "digits")
    data = load_data(str(folder), in_chans=3, val_fraction=0.25, seed=0)
    first = decoded(data.train, 8, progress=False)
    (cached,) = cache.glob("*.npy")
    written = cached.stat().st_mtime_ns
    again = decoded(data.train, 8, progress=False)
    assert torch.equal(first.images, again.images) and cached.stat().st_mtime_ns == written  # read, not redone
    changed, _ = data.train.samples[0]
    Image.new("RGB", (14, 20), "white").save(changed)
    os.utime(changed, ns=(written + 10**9, written + 10**9))
    renewed = decoded(data.train, 8, progress=False)
    assert len(list(cache.glob("*.npy"))) == 2
    assert (renewed.images[0] == 255).all() and not torch.equal(renewed.images[0], first.images[0])


@pytest.mark.slow
def test_a_run_with_cache_decoded_trains_from_batched_memory(tmp_path, cache):
    folder = _digit_folder(tmp_path / "digits", per_class=30)
    config = digits_config(
        tmp_path, data=str(folder), in_chans=1, cache_decoded=True, epochs=3, min_steps=40, rotate=10.0
    )
    summary = train(config, progress=False)
    assert summary.final_top1 > 0.5  # 3 classes: chance is a third
    data = decode_once(config, load_data(str(folder), in_chans=1, val_fraction=0.1, seed=0), 8, Processes())
    assert isinstance(data.val, ArrayImageDataset)
    assert isinstance(run_datasets(config, data, 8, Processes())[0], AugmentedBatches)


def test_shards_cannot_be_cached(tmp_path):
    write_shards(load_data("digits"), tmp_path / "shards", source="digits", shard_size=500)
    with pytest.raises(ConfigError, match="--cache-decoded is for image folders and CSVs"):
        train(digits_config(tmp_path, data=str(tmp_path / "shards"), cache_decoded=True), progress=False)


def test_a_folder_that_fits_in_memory_is_decoded_once_by_default(tmp_path, cache, monkeypatch):
    folder = _digit_folder(tmp_path / "digits", per_class=3)
    config = digits_config(tmp_path, data=str(folder), in_chans=1, epochs=1)
    assert config.cache_decoded is None
    data = load_data(str(folder), in_chans=1)
    assert isinstance(decode_once(config, data, 8, Processes()).train, ArrayImageDataset)
    assert isinstance(decode_once(replace(config, cache_decoded=False), data, 8, Processes()).train, FileImageDataset)
    monkeypatch.setattr(inputs, "DECODED_MEMORY_SHARE", 1e-12)  # a machine too small for the decoded set
    assert isinstance(decode_once(config, data, 8, Processes()).train, FileImageDataset)
