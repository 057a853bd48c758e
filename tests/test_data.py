"""Data sources and preprocessing on real files of every common image mode."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from conftest import logged
from vitkit.data.datasets.image_datasets import (
    DataError,
    TransformedDataset,
    collate_skipping_broken,
    preprocess_in_memory,
)
from vitkit.data.images import convert_image, load_image
from vitkit.data.load import load_data
from vitkit.data.transforms import batch_mixing, eval_transform, train_transform
from vitkit.train import resolve_config, train


def save_all_modes(folder, shade):
    """One image per mode a user's folder may hold, each 12×12 and of one shade."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = np.full((12, 12), shade, np.uint8)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(folder / "rgb.jpg")
    Image.fromarray(np.dstack([gray] * 3 + [np.full((12, 12), 255, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(np.stack([gray] * 3, -1)).convert("P").save(folder / "palette.gif")
    Image.fromarray(np.stack([gray] * 3, -1)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "sixteen.png")


def truncated_png():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()[:200]


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "shades"
    save_all_modes(root / "dark", 40)
    save_all_modes(root / "light", 220)
    (root / "dark" / "garbage.png").write_bytes(b"this is not a PNG file at all")
    (root / "light" / "truncated.png").write_bytes(truncated_png())
    (root / "light" / "notes.txt").write_text("not an image, not even looked at")
    return root


def test_every_mode_becomes_the_models_channels(tmp_path):
    save_all_modes(tmp_path, 200)
    for path in sorted(tmp_path.iterdir()):
        for chans, mode in ((1, "L"), (3, "RGB")):
            image = load_image(path, chans)
            assert image.mode == mode, path.name
            value = np.asarray(image).mean()
            assert abs(value - 200) < 6, (path.name, mode, value)  # same shade whatever the source mode


def test_sixteen_bit_uses_the_full_range():
    image = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
    assert np.asarray(convert_image(image, 1)).tolist() == [[0, 128, 255]]


def test_transparent_pixels_become_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 255  # white, but fully transparent
    assert np.asarray(convert_image(Image.fromarray(rgba), 3)).max() == 0


def test_unreadable_files_are_skipped_with_a_warning_naming_them(image_folder, caplog):
    with logged(caplog, "garbage.png"):
        data = load_data(str(image_folder), in_chans=3, val_fraction=0.3, seed=0)
    assert data.class_names == ["dark", "light"]
    assert [p.endswith("garbage.png") for p in data.skipped] == [True]
    assert len(data.train) + len(data.val) == 13  # 6 + 6 good ones + the truncated one
    assert all(len({label for _, label in part.samples}) == 2 for part in (data.train, data.val))

    everything = TransformedDataset(_all_files(data), eval_transform(16, 3))
    with logged(caplog, "truncated.png"):
        images, labels, broken = collate_skipping_broken([everything[i] for i in range(len(everything))])
    assert images.shape == (12, 3, 16, 16) and len(labels) == 12
    assert len(broken) == 1 and "truncated.png" in broken[0]


def _all_files(data):
    from vitkit.data.datasets.image_datasets import FileImageDataset

    return FileImageDataset(data.train.samples + data.val.samples, 3)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(
            {"epochs": 2, "crop_scale": [0.5, 1.0], "cache_decoded": False},
            marks=pytest.mark.slow,
            id="read each epoch",
        ),
        pytest.param({"epochs": 1, "cache_decoded": True}, id="decoded once"),
    ],
)
def test_training_on_a_folder_counts_skipped_files(settings, image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))
    config = resolve_config(
        overrides={
            "data": str(image_folder),
            "img_size": 16,
            "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_dim": 16},
            "batch_size": 4,
            "val_fraction": 0.3,
            "out": str(tmp_path / "run"),
            **settings,
        }
    )
    summary = train(config, progress=False)
    assert summary.skipped_files == 2  # garbage.png at scan time, truncated.png when decoded


def test_train_and_val_folders_must_have_the_same_classes(tmp_path):
    save_all_modes(tmp_path / "train" / "cat", 10)
    save_all_modes(tmp_path / "train" / "dog", 10)
    save_all_modes(tmp_path / "val" / "cat", 10)
    save_all_modes(tmp_path / "val" / "cow", 10)
    with pytest.raises(DataError, match=r"only in train \['dog'\], only in val \['cow'\]"):
        load_data(str(tmp_path))


def test_a_folder_without_readable_images_is_an_error(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"garbage")
    with logged(caplog, ""), pytest.raises(DataError, match="no readable image in"):
        load_data(str(tmp_path))
    with pytest.raises(DataError, match="has no class sub-folders"):
        load_data(str(tmp_path / "a"))


def test_csv_of_paths_and_labels(tmp_path, caplog):
    save_all_modes(tmp_path / "imgs", 90)
    rows = ["path,label"] + [
        f"imgs/{p.name},{'odd' if i % 2 else 'even'}" for i, p in enumerate(sorted((tmp_path / "imgs").iterdir()))
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\nimgs/missing.png,odd\n")
    with logged(caplog, "missing.png"):
        data = load_data(str(tmp_path / "labels.csv"), in_chans=1, val_fraction=0.34)
    assert data.class_names == ["even", "odd"] and len(data.train) + len(data.val) == 6
    assert data.train[0][0].mode == "L"


def test_builtin_datasets_load_offline():
    digits = load_data("digits")
    assert len(digits.train) + len(digits.val) == 1797 and digits.image_size == (8, 8) and not digits.flip_ok
    image, label = digits.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and 0 <= label < 10
    mnist = load_data("mnist")
    assert (len(mnist.train), len(mnist.val)) == (60000, 10000)
    assert mnist.train[0][1] == 5 and mnist.val.images.shape == (10000, 1, 28, 28)  # MNIST's first label is 5


def test_transforms_scale_to_minus_one_one_and_are_seeded():
    digits = load_data("digits")
    augment = train_transform(16, 1, crop_scale=(0.5, 1.0), flip=False, randaugment=9)
    dataset = TransformedDataset(digits.train, augment, seed=1)
    x, _ = dataset[3]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(dataset[3][0], x)  # same (seed, epoch, index) → same crop
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3][0], x)


def test_preprocessing_in_memory_equals_per_sample():
    digits = load_data("digits")
    transform = eval_transform(16, 3)
    batched = preprocess_in_memory(digits.val, transform)
    single = TransformedDataset(digits.val, transform)
    for i in (0, 100, 358):
        torch.testing.assert_close(batched[i][0], single[i][0])
        assert batched[i][1] == single[i][1]


def test_mixup_and_cutmix_give_soft_labels():
    mixing = batch_mixing(10, mixup=0.8, cutmix=1.0)
    images = tv_tensors.Image(torch.randn(8, 3, 16, 16))
    mixed, targets = mixing(images, torch.arange(8))
    assert mixed.shape == images.shape and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert batch_mixing(10) is None


# ------------------------------------------------------------------ untrusted CSVs and counts
def _twelve_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _all_paths(data):
    return [str(p.resolve()) for p, _ in data.train.samples + data.val.samples]


@pytest.mark.parametrize("form", ["single", "sets", "multi-hot"])
def test_a_csv_image_listed_twice_is_used_once(tmp_path, form, caplog):
    _twelve_images(tmp_path / "imgs")
    label = {"single": lambda i: "cat" if i % 2 else "dog", "sets": lambda i: "cat;dog" if i % 2 else "dog"}
    if form == "multi-hot":
        rows = ["path,cat,dog"] + [f"imgs/{i}.png,{i % 2},1" for i in range(12)]
        rows += [f"./imgs/{i}.png,{i % 2},1" for i in range(6)]  # the same files, spelled another way
    else:
        rows = ["path,label"] + [f"imgs/{i}.png,{label[form](i)}" for i in range(12)]
        rows += [f"./imgs/{i}.png,{label[form](i)}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    for seed in range(4):
        with logged(caplog, "6 duplicate row"):
            data = load_data(str(tmp_path / "labels.csv"), in_chans=3, val_fraction=0.5, seed=seed)
        paths = _all_paths(data)
        assert len(paths) == len(set(paths)) == 12  # no image both trained on and held out


def test_a_csv_image_with_two_different_labels_is_an_error_naming_the_lines(tmp_path):
    _twelve_images(tmp_path / "imgs")
    rows = ["path,label"] + [f"imgs/{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)] + ["imgs/3.png,dog"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"lines 5 and 14: imgs/3.png is listed twice with different labels"):
        load_data(str(tmp_path / "labels.csv"))
    (tmp_path / "sets.csv").write_text("path,label\nimgs/0.png,cat;dog\nimgs/1.png,dog\nimgs/0.png,cat\n")
    with pytest.raises(DataError, match=r"lines 2 and 4"):
        load_data(str(tmp_path / "sets.csv"))


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("path,label\nimgs/0.png,caf\xe9\n".encode("latin-1"), 2, "not UTF-8"),
        (b"path,label\nimgs/0.png,cat\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 5, "binary"),
    ],
)
def test_a_csv_that_is_not_utf8_text_is_one_error_naming_the_line(tmp_path, content, line, what):
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(DataError, match=rf"labels.csv, line {line}: .*{what}"):
        load_data(str(tmp_path / "labels.csv"))


def test_a_utf8_csv_with_a_byte_order_mark_reads(tmp_path):
    _twelve_images(tmp_path / "imgs")
    rows = ["path,label"] + [f"imgs/{i}.png,caf\xe9{i % 2}" for i in range(12)]
    (tmp_path / "labels.csv").write_bytes(("\n".join(rows) + "\n").encode("utf-8-sig"))
    assert load_data(str(tmp_path / "labels.csv")).class_names == ["caf\xe90", "caf\xe91"]


def test_multi_label_rows_without_any_label_are_refused_when_loaded(tmp_path):
    _twelve_images(tmp_path / "imgs")
    (tmp_path / "hot.csv").write_text("path,cat,dog\n" + "".join(f"imgs/{i}.png,0,0\n" for i in range(12)))
    with pytest.raises(DataError, match=r"none of the .* image.s. has a label"):
        load_data(str(tmp_path / "hot.csv"), val_fraction=0.25)
    # labels on the training images only: the held-out score would be undefined after the first epoch
    rows = "".join(f"imgs/{i}.png,{int(i < 9)},0\n" for i in range(12))
    (tmp_path / "train_only.csv").write_text("path,cat,dog\n" + rows)
    for seed in range(20):
        data_or_error = None
        try:
            data_or_error = load_data(str(tmp_path / "train_only.csv"), val_fraction=0.25, seed=seed)
        except DataError as error:
            assert "held-out" in str(error)
            continue
        assert any(target.any() for _, target in data_or_error.val.samples)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), for what happens when the disk is full; needs root."""
    import shutil
    import subprocess

    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_while_decoding_once_is_one_error_and_leaves_no_file(tmp_path, small_disk):
    import subprocess
    import sys

    for label in ("a", "b"):
        _twelve_images(tmp_path / "data" / label)  # 24 images × 3 × 160² bytes = 1.8 MB decoded: over 1 MiB
    command = [sys.executable, "-m", "vitkit.cli.main", "train", "--data", str(tmp_path / "data"), "--preset", "demo",
               "--img-size", "160", "--model-args", "patch_size=16", "embed_dim=16", "depth=1", "num_heads=2",
               "mlp_dim=16", "--epochs", "1", "--cache-decoded", "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "VITKIT_HOME": str(small_disk)}, timeout=300
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vitkit: error:")]
    assert len(errors) == 1 and "no room for the decoded images" in errors[0] and "Traceback" not in done.stderr
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []
