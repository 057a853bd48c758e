"""Never stuck, nothing lost: signals, locks, restarts, leftovers and overwrites, process-level."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vitkit
from conftest import digits_config, logged, tiny_vit
from vitkit.analysis import inspection_images
from vitkit.cli.main import main
from vitkit.data.datasets.builtin import load_digits
from vitkit.data.images import load_image
from vitkit.data.shards import load_shards, write_shards
from vitkit.fileio import lock_folder
from vitkit.interop import export_model, save_model
from vitkit.train import train
from vitkit.train.loop import resume_run


def _start_training(config, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    return subprocess.Popen(
        [sys.executable, "-m", "vitkit.cli.main", "train", "--config", str(config_file), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes_to_the_same_weights(tmp_path):
    # ~2 s of training; no checkpoint but the one the signal asks for
    settings = {"epochs": 16, "checkpoint_every": 100_000}
    stopped = digits_config(tmp_path, out=str(tmp_path / "stopped"), **settings)
    process = _start_training(stopped, tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "stopped" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # an epoch into the run
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "stopped by SIGTERM after step" in err and "--resume" in err
    assert (tmp_path / "stopped" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "stopped" / "model.safetensors").exists()  # it really stopped early
    resume_run(tmp_path / "stopped", progress=False)
    train(digits_config(tmp_path, out=str(tmp_path / "straight"), **settings), progress=False)
    resumed = load_file(str(tmp_path / "stopped" / "model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_can_restart(tmp_path, caplog):
    config = digits_config(tmp_path, epochs=1)
    Path(config.out).mkdir(parents=True)
    (Path(config.out) / "train_config.json").write_text(config.to_json())  # what such a stop leaves
    assert train(config, progress=False).steps > 0
    strict = json.loads((Path(config.out) / "summary.json").read_text(), parse_constant=pytest.fail)
    assert 0 <= strict["best_top1"] <= 1  # strict JSON: no -Infinity or NaN for other tools to choke on
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, progress=False)
    fresh = digits_config(tmp_path, epochs=1, out=str(tmp_path / "again"))
    Path(fresh.out).mkdir()
    (Path(fresh.out) / "train_config.json").write_text(fresh.to_json())
    with logged(caplog, "starts from the beginning"):
        assert resume_run(fresh.out, progress=False).steps > 0


@pytest.mark.slow
def test_one_process_per_run_folder(tmp_path):
    config = digits_config(tmp_path, epochs=1)
    Path(config.out).mkdir(parents=True)
    held = lock_folder(Path(config.out))
    try:
        with pytest.raises(ValueError, match=r"is in use by vitkit process \d+"):
            train(config, progress=False)
    finally:
        held.close()
    train(config, progress=False)


def test_leftovers_of_killed_writers_are_cleaned_up_and_live_ones_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    folder = tmp_path / "model"
    folder.mkdir()
    dead = folder / f".model.safetensors.{dead_pid}.abc123.tmp"
    live = folder / f".model.safetensors.{os.getpid()}.def456.tmp"
    dead.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    save_model(folder, tiny_vit())
    assert not dead.exists() and live.exists()


def test_convert_never_overwrites_without_force(tmp_path, capsys):
    save_model(tmp_path / "a", tiny_vit())
    save_model(tmp_path / "b", tiny_vit(num_classes=3))
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "vitkit"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert vitkit.load_model(tmp_path / "b").model.config.num_classes == 3
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "vitkit", "--force"]) == 0
    assert vitkit.load_model(tmp_path / "b").model.config.num_classes == 10


@pytest.mark.slow
def test_onnx_export_is_one_file_and_the_suffix_says_the_format(tmp_path):
    export_model(tiny_vit(), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    with pytest.raises(ValueError, match=r"one \.onnx file"):
        export_model(tiny_vit(), tmp_path / "m.xyz")


def test_a_disk_that_cannot_be_written_gets_one_line(tmp_path, capsys):
    save_model(tmp_path / "a", tiny_vit())
    (tmp_path / "file").write_text("not a folder")
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "file" / "out"), "--to", "vitkit"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vitkit: error:") and "Traceback" not in err


def _bomb(path):
    """A small PNG that declares far more pixels than PIL's decompression-bomb guard allows."""
    Image.new("1", (30000, 30000)).save(path)
    return path


def test_a_decompression_bomb_is_skipped_like_any_unreadable_image(tmp_path, capsys, caplog):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), 25 * i, dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    _bomb(tmp_path / "data" / "a" / "bomb.png")
    save_model(tmp_path / "model", tiny_vit(num_classes=2))
    good = tmp_path / "data" / "a" / "0.png"
    assert main(["predict", str(tmp_path / "model"), str(good), str(tmp_path / "data" / "a" / "bomb.png")]) == 0
    out = capsys.readouterr().out
    assert "bomb.png: cannot read image" in out and "0.png:" in out
    with logged(caplog, "bomb.png"):
        summary = train(
            digits_config(tmp_path, data=str(tmp_path / "data"), img_size=8, epochs=1, batch_size=8), progress=False
        )
    assert summary.skipped_files == 1
    with logged(caplog, "bomb.png"):
        images = inspection_images(vitkit.load_model(tmp_path / "model"), paths=[tmp_path / "data" / "a"], count=20)
    assert len(images) == 10


def test_phone_photos_are_turned_upright(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # white left half, stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    upright = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert upright.shape == (40, 20, 3)
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # the white half is now on top


def test_broken_files_give_one_line_errors(tmp_path):
    with open(tmp_path / "huge.npy", "wb") as handle:  # a header claiming 10^12 float32s
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.write(tmp_path / "huge.npy", "embedding/kernel.npy")
    with pytest.raises(ValueError, match=r"huge\.npz is not a readable \.npz file"):
        vitkit.load_model(tmp_path / "huge.npz")
    save_model(tmp_path / "model", tiny_vit(num_classes=3), class_names=["a", "b", "c"])
    document = json.loads((tmp_path / "model" / "config.json").read_text())
    for change, words in (
        ({"vit": {**document["vit"], "colour": 1}}, "unknown ViTConfig field"),
        ({"class_names": ["a"]}, "names 1 classes for a model with 3"),
    ):
        (tmp_path / "model" / "config.json").write_text(json.dumps({**document, **change}))
        with pytest.raises(ValueError, match=words):
            vitkit.load_model(tmp_path / "model")


def test_shard_samples_without_a_usable_label_are_skipped(tmp_path, caplog):
    write_shards(load_digits(), tmp_path / "shards", source="digits", shard_size=2000)
    shard = next((tmp_path / "shards").glob("val-*.tar"))
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    labels = sorted(m.name for m, _ in members if m.name.endswith(".cls"))
    broken = {labels[0]: b"99", labels[1]: b"cat"}  # out of range, and not a number
    with tarfile.open(shard, "w") as archive:  # the same samples, two labels broken
        for member, content in members:
            content = broken.get(member.name, content)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    stream = load_shards(tmp_path / "shards").val
    with logged(caplog, "skipping unusable sample"):
        problems = [where for image, where in stream if image is None]
    assert len(problems) == 2 and any("label 99 is not one of the 10 classes" in p for p in problems)
