"""Outputs never overwrite what is not theirs: run, figure and shard folders, exported files."""

import json

import pytest
import torch

import vitkit
from conftest import digits_config, tiny_vit
from vitkit import analysis
from vitkit.cli.main import main
from vitkit.data.load import load_data
from vitkit.data.shards import write_shards
from vitkit.train import train

USER_CONFIG = '{"mine": "a config.json the user wrote"}'


@pytest.fixture
def users_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(USER_CONFIG)
    return folder


TINY_TRAIN = ["--data", "digits", "--img-size", "8", "--epochs", "1", "--quiet",
              "--model-args", "patch_size=4", "embed_dim=16", "depth=1", "num_heads=2", "mlp_dim=16"]  # fmt: skip


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_training_into_a_folder_of_someone_elses_files_is_refused(users_folder, capsys, command):
    extra = ["--objective", "mae"] if command == "pretrain" else []
    assert main([command, *TINY_TRAIN, *extra, "--out", str(users_folder)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds files vitkit did not write (config.json)" in error and "--force" in error
    assert (users_folder / "config.json").read_text() == USER_CONFIG
    assert sorted(p.name for p in users_folder.iterdir()) == ["config.json"]


def test_force_trains_into_it_and_a_vitkit_run_folder_is_recognised(users_folder, tmp_path):
    summary = train(digits_config(tmp_path, epochs=1, out=str(users_folder)), progress=False, force=True)
    assert summary.final_top1 is not None
    assert json.loads((users_folder / "config.json").read_text()) != json.loads(USER_CONFIG)
    # an interrupted run's own folder (its settings, no checkpoint yet) is taken again without --force
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "train_config.json").write_text(digits_config(tmp_path, out=str(fresh)).to_json())
    assert train(digits_config(tmp_path, epochs=1, out=str(fresh)), progress=False).final_top1 is not None


def test_inspect_into_a_folder_of_someone_elses_files_is_refused(users_folder, tmp_path):
    model = tiny_vit().eval()
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(FileExistsError, match="holds files vitkit did not write"):
        analysis.inspect_model(model, images, users_folder, methods=(), measure_faithfulness=False)
    assert sorted(p.name for p in users_folder.iterdir()) == ["config.json"]
    own = tmp_path / "figures"
    analysis.inspect_model(model, images, own, methods=(), measure_faithfulness=False)
    analysis.inspect_model(model, images, own, methods=(), measure_faithfulness=False)  # its own: rewritten


def test_shards_into_a_folder_of_someone_elses_files_are_refused(users_folder):
    with pytest.raises(FileExistsError, match="holds files vitkit did not write"):
        write_shards(load_data("digits"), users_folder, source="digits")
    assert sorted(p.name for p in users_folder.iterdir()) == ["config.json"]


@pytest.fixture
def model_folder(tmp_path):
    vitkit.save_model(tmp_path / "model", tiny_vit().eval())
    return tmp_path / "model"


@pytest.mark.parametrize(
    ("name", "flags"), [("vit.onnx", []), ("vit.pt2", ["--format", "pt2"]), ("q.onnx", ["--int8"])]
)
def test_export_over_an_existing_file_needs_force(model_folder, tmp_path, capsys, name, flags):
    target = tmp_path / name
    target.write_bytes(b"someone's file")
    assert main(["export", str(model_folder), str(target), *flags]) == 2
    assert "already exists" in capsys.readouterr().err and target.read_bytes() == b"someone's file"
    assert main(["export", str(model_folder), str(target), *flags, "--force"]) == 0
    assert target.read_bytes() != b"someone's file"


def test_an_int8_export_is_an_onnx_file(model_folder, tmp_path, capsys):
    assert main(["export", str(model_folder), str(tmp_path / "q.pt2"), "--int8"]) == 2
    assert "a onnx export is written as one .onnx file" in capsys.readouterr().err
    assert not (tmp_path / "q.pt2").exists()
