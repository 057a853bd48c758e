"""Tar shards: written from an image folder, streamed back once per epoch per process, trained on."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import TINY, torchrun, write_config
from vitkit.cli.main import main
from vitkit.data.datasets.builtin import load_digits
from vitkit.data.datasets.image_datasets import DataError
from vitkit.data.load import load_data
from vitkit.data.shards import ShardStream, write_shards
from vitkit.train import resolve_config, train


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """260 digits as PNG files in ImageFolder layout (train/ and val/)."""
    root = tmp_path_factory.mktemp("folder")
    digits = load_digits()
    for split, dataset, count in (("train", digits.train, 200), ("val", digits.val, 60)):
        for i in range(count):
            image, label = dataset[i]
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image[0], dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def shards(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "digits"
    assert main(["shards", str(image_folder), str(out), "--shard-size", "23", "--in-chans", "1"]) == 0
    return out


def _keys_read(stream, workers):
    """Every sample's pixel bytes as read through a DataLoader with ``workers`` processes."""
    loader = DataLoader(
        stream.configured(transform=lambda im: torch.from_numpy(np.asarray(im).copy())),
        batch_size=None,
        num_workers=workers,
    )
    return [(image.numpy().tobytes(), label) for image, label in loader]


def test_every_image_comes_back_exactly_once_per_epoch(image_folder, shards):
    manifest = json.loads((shards / "shards.json").read_text())
    assert [s["count"] for s in manifest["splits"]["train"]] == [23] * 8 + [16]
    originals = Counter()
    for path in (image_folder / "train").rglob("*.png"):
        originals[(np.asarray(Image.open(path)).tobytes(), int(path.parent.name))] += 1
    for epoch in (0, 1):
        read = Counter()
        orders = []
        for rank in (0, 1):  # two processes with two loader workers each
            stream = ShardStream(shards, "train", in_chans=1, shuffle_buffer=50, seed=0, rank=rank, world_size=2)
            stream.set_epoch(epoch)
            keys = _keys_read(stream, workers=2)
            read.update(keys)
            orders.append(keys)
        assert read == originals, "some image was lost or read twice"
        if epoch == 0:
            first = orders
    assert orders != first  # the shuffle changes with the epoch


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_training_streams_shards_in_one_and_two_processes(shards, tmp_path, capsys):
    settings = {"data": str(shards), "img_size": 8, "model_args": TINY, "epochs": 2, "batch_size": 16}
    summary = train(resolve_config(preset="demo", overrides={**settings, "out": str(tmp_path / "one")}), progress=False)
    records = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_images"] for r in records] == [60, 60]
    assert summary.steps == 2 * (200 // 16)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "one"), "--json"]) == 0  # vitkit eval reads the shards too
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 60 and report["top1"] == pytest.approx(records[-1]["val_top1"])
    config = resolve_config(preset="demo", overrides={**settings, "out": str(tmp_path / "two")})
    torchrun("train", "--config", write_config(config, tmp_path / "two.json"))
    records = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_images"] for r in records] == [60, 60]  # every held-out image once over both
    # Rank 0 reads shards 0, 2, …, 8 (23·4 + 16 = 108 images), rank 1 four of 23 (92): 5 batches each.
    assert records[-1]["step"] == 2 * (92 // 16)


def test_loader_workers_each_drop_their_own_partial_batch(shards, tmp_path):
    # 2 workers: shards 0, 2, 4, 6, 8 (108 images: 6 batches of 16) and 1, 3, 5, 7 (92: 5 batches).
    stream = ShardStream(shards, "train", in_chans=1)
    assert stream.batches_per_epoch(16, workers=2) == 11 and stream.batches_per_epoch(16, workers=0) == 12
    settings = {"data": str(shards), "img_size": 8, "model_args": TINY, "epochs": 1, "batch_size": 16, "workers": 2}
    summary = train(resolve_config(preset="demo", overrides={**settings, "out": str(tmp_path / "run")}), progress=False)
    assert summary.steps == 11 and summary.epochs == 1.0


def test_bad_shard_folders_say_what_is_wrong(shards, tmp_path):
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(load_digits(), shards, source="digits")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "shards.json").write_text((shards / "shards.json").read_text())
    with pytest.raises(DataError, match="is missing"):
        load_data(str(broken))


def test_too_few_shards_for_the_readers_is_refused(shards, tmp_path):
    settings = {"data": str(shards), "img_size": 8, "model_args": TINY, "epochs": 1, "workers": 10}
    with pytest.raises(ValueError, match="9 train shard"):
        train(resolve_config(preset="demo", overrides={**settings, "out": str(tmp_path / "run")}), progress=False)
