"""End-to-end training on the real digits dataset: train → eval → predict, resume, NaN, errors."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vitkit
from conftest import TINY, digits_config, logged, run_until_checkpoint
from vitkit.cli.main import main
from vitkit.train import SingleLabelScores, TrainingDiverged, resolve_config, resume_run, train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    # fp32: `vitkit eval` computes in fp32, so its figures must equal the run's own exactly
    summary = train(digits_config(tmp, epochs=6, precision="fp32"), progress=False)
    return Path(summary.run_dir), summary


def test_training_on_digits_learns_and_leaves_a_complete_run_folder(trained_run):
    run_dir, summary = trained_run
    assert summary.final_top1 > 0.6  # 10 classes: chance is 0.1
    for name in (
        "config.json",
        "model.safetensors",
        "train_config.json",
        "checkpoint.safetensors",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "confusion.png",
    ):
        assert (run_dir / name).is_file(), name
    scalars = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"]
    assert {"train/loss", "train/grad_norm", "train/lr", "epoch/train_loss"} <= set(scalars)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 7))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["data"] == "digits" and saved["model_args"] == TINY and saved["preset"] == "demo"


def test_eval_and_predict_from_the_cli(trained_run, tmp_path, capsys):
    run_dir, summary = trained_run
    assert main(["eval", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1"] == pytest.approx(summary.final_top1)
    assert report["images"] == 359 and len(report["per_class"]) == 10  # round(1797 × 0.2) held out

    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(3):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(tmp_path / f"digit{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["predict", str(run_dir), str(tmp_path), "--top-k", "3", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 4
    broken = next(p for p in predictions if p["path"].endswith("broken.png"))
    assert broken["error"] and not broken["top"]
    good = [p for p in predictions if not p["error"]]
    assert all(len(p["top"]) == 3 and abs(sum(q for _, q in p["top"])) <= 1.0001 for p in good)


def test_single_label_scores_as_json_and_as_a_table():
    confusion = torch.tensor([[3, 1], [0, 4]])
    float_scores = SingleLabelScores(7 / 8, 1.0, 0.25, 8, confusion, predicted=torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]))
    int8 = SingleLabelScores(6 / 8, 1.0, 0.5, 8, confusion, predicted=torch.tensor([0, 0, 1, 1, 1, 1, 1, 1]))
    document = int8.to_dict(["cat", "dog"], baseline=float_scores)
    assert document["per_class"] == {"cat": 0.75, "dog": 1.0} and document["top1_agreement"] == 7 / 8
    assert json.loads(json.dumps(document)) == document
    assert "top1_agreement" not in float_scores.to_dict(["cat", "dog"])
    assert float_scores.summary() == "top-1 87.50%  top-5 100.00%  loss 0.2500"
    assert int8.compared_with(float_scores) == "the same top-1 class for 87.50% of the images, top-1 -12.50 points"
    assert float_scores.per_class_table(["cat", "dog"], beside=int8).splitlines() == [
        f"  {'cat':>20s}   75.00% |  75.00%",
        f"  {'dog':>20s}  100.00% | 100.00%",
    ]


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # ~1 s: time to stop it mid-run; batched augmentation of every kind
    settings = {"epochs": 6, "dropout": 0.1, "drop_path": 0.1, "rotate": 10, "erase": 0.25, "randaugment": 9}
    full = train(digits_config(tmp_path / "a", **settings), progress=False)
    stopped = run_until_checkpoint(digits_config(tmp_path / "b", **settings), min_step=27)  # mid epoch 2
    resumed = resume_run(stopped, progress=False)
    assert resumed.steps == full.steps
    a = load_file(str(Path(full.run_dir) / "model.safetensors"))
    b = load_file(str(Path(resumed.run_dir) / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def metrics(run_dir):
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        timings = ("images_per_second", "data_wait_fraction")
        return [{k: v for k, v in json.loads(x).items() if k not in timings} for x in lines]

    assert metrics(full.run_dir) == metrics(resumed.run_dir)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import vitkit.train.run as run_module

    build_model = run_module.build_model
    calls = {"forward": 0}

    def poisoned_after_12_steps(*args, **kwargs):
        """Fault injection: the real model, whose input turns to NaN from its 13th call."""
        model = build_model(*args, **kwargs)

        def poison(module, inputs):
            calls["forward"] += 1
            if calls["forward"] > 12 and module.training:
                return (inputs[0] * float("nan"),)

        model.register_forward_pre_hook(poison)
        return model

    monkeypatch.setattr(run_module, "build_model", poisoned_after_12_steps)
    config = digits_config(tmp_path, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 13 \(epoch 1\); stopped.*checkpoint"):
        train(config, progress=False)
    checkpoint_file = Path(config.out) / "checkpoint.safetensors"
    from safetensors import safe_open

    with safe_open(str(checkpoint_file), "pt") as handle:
        assert json.loads(handle.metadata()["progress"])["step"] == 10
    weights = load_file(str(checkpoint_file))
    assert all(torch.isfinite(v).all() for k, v in weights.items() if k.startswith("model."))
    assert not (Path(config.out) / "model.safetensors").exists()


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "is neither a built-in dataset" in capsys.readouterr().err
    assert main(["train", "--preset", "fest"]) == 2
    assert "unknown preset 'fest'; choose one of deit, demo" in capsys.readouterr().err
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"hello": 1}')
    assert main(["eval", str(not_a_model), "--data", "digits"]) == 2
    assert "is not a vitkit model config" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nowhere"), "x.png"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a vitkit run folder" in capsys.readouterr().err


def test_flags_can_switch_off_a_preset_setting(tmp_path, capsys):
    # paper-finetune crops to 5-100 % of the area; "none" turns that off from the command line.
    run = tmp_path / "run"
    args = ["train", "--preset", "paper-finetune", "--data", "digits", "--img-size", "8", "--epochs", "0.2"]
    args += ["--accum-steps", "1", "--model", "Ti/16", "--model-args", "patch_size=4", "depth=1", "--quiet"]
    assert main([*args, "--crop-scale", "none", "--out", str(run)]) == 0
    assert json.loads((run / "train_config.json").read_text())["crop_scale"] is None
    assert main([*args, "--crop-scale", "0.5", "--out", str(tmp_path / "other")]) == 2
    assert "--crop-scale takes 2 numbers or the word none" in capsys.readouterr().err


def test_a_new_run_never_overwrites_an_old_one(trained_run, capsys):
    run_dir, _ = trained_run
    before = (run_dir / "model.safetensors").read_bytes()
    assert main(["train", "--data", "digits", "--out", str(run_dir), "--quiet"]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert (run_dir / "model.safetensors").read_bytes() == before


def test_unknown_preset_and_setting_in_a_config_file(tmp_path):
    from vitkit.train import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'deit3'; did you mean 'deit'"):
        resolve_config(preset="deit3")
    bad = tmp_path / "run.toml"
    bad.write_text("learning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        resolve_config(file=bad)


def test_config_layers_merge_in_order(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("preset: deit\nlr: 0.002\nmodel_args:\n  depth: 3\n")
    config = resolve_config(file=file, overrides={"epochs": 1.5, "model_args": {"embed_dim": 96}})
    assert config.preset == "deit" and config.mixup == 0.8  # from the preset
    assert config.lr == 0.002 and config.epochs == 1.5
    assert config.model_args == {"depth": 3, "embed_dim": 96}
    assert config.peak_lr() == pytest.approx(0.002 * 128 / 512)
    assert config.peak_lr(processes=4) == pytest.approx(0.002 * 512 / 512)  # global batch counts processes


@pytest.mark.slow
def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    # SGD, not Adam: Adam divides by the gradient's own size, which turns float noise in
    # gradients that are exactly zero in theory (the key bias) into full-size steps. fp32: bf16
    # rounds the two batch shapes differently.
    settings = {"epochs": 0.5, "grad_clip": 0.0, "optimizer": "sgd", "lr": 0.05, "precision": "fp32"}
    big = train(digits_config(tmp_path / "big", batch_size=64, **settings), progress=False)
    accumulated = train(digits_config(tmp_path / "acc", batch_size=32, accum_steps=2, **settings), progress=False)
    assert big.steps == accumulated.steps
    a = load_file(str(Path(big.run_dir) / "model.safetensors"))
    b = load_file(str(Path(accumulated.run_dir) / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_ema_weights_are_what_the_run_saves(tmp_path):
    summary = train(digits_config(tmp_path, epochs=1, ema=0.9), progress=False)
    run_dir = Path(summary.run_dir)
    saved = load_file(str(run_dir / "model.safetensors"))
    checkpoint = load_file(str(run_dir / "checkpoint.safetensors"))
    key = "blocks.0.mlp.fc1.weight"
    assert torch.equal(saved[key], checkpoint[f"ema.module.{key}"])
    assert not torch.equal(saved[key], checkpoint[f"model.{key}"])


def test_deterministic_mode_is_restored_after_the_run(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    train(digits_config(tmp_path, epochs=0.2, deterministic=True), progress=False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow
def test_fine_tune_from_timm_weights_at_a_higher_resolution(tmp_path):
    import timm
    from safetensors.torch import save_file

    # A small timm ViT "pre-trained" (randomly initialised) at 8 px, saved with its own names.
    peer = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=8,
        patch_size=2,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=3,
    )
    save_file(peer.state_dict(), str(tmp_path / "timm.safetensors"))
    config = digits_config(
        tmp_path,
        img_size=16,
        epochs=1,
        init=str(tmp_path / "timm.safetensors"),
        preset="paper-finetune",
        model="Ti/16",
        batch_size=64,
        accum_steps=1,
        lr=0.03,
        crop_scale=None,
    )
    from vitkit.train.run import build_model

    start = build_model(config, num_classes=10, in_chans=1)
    assert torch.equal(start.blocks[1].attn.qkv.weight, peer.blocks[1].attn.qkv.weight)
    assert start.head.weight.shape == (10, 32) and torch.count_nonzero(start.head.weight) == 0
    summary = train(config, progress=False)
    from vitkit import load_model

    model = load_model(summary.run_dir).model
    assert model.config.img_size == (16, 16) and model.pos_embed.shape == (1, 1 + 64, 32)


def test_init_from_a_run_folder_keeps_its_architecture(trained_run, tmp_path, caplog):
    from vitkit.train.run import build_model

    run_dir, _ = trained_run
    config = resolve_config(
        preset="demo", overrides={"init": str(run_dir), "data": "digits", "out": str(tmp_path / "ft")}
    )  # the demo preset's model_args describe another architecture: they go, without a word
    assert config.model_args == {}
    with caplog.at_level(logging.WARNING):
        model = build_model(config, num_classes=10, in_chans=1)
    assert "ignoring model_args" not in caplog.text
    assert model.config.embed_dim == TINY["embed_dim"] and model.config.patch_size == TINY["patch_size"]
    assert torch.count_nonzero(model.head.weight) == 0
    # model_args the user gives that the weights contradict are named
    overrides = {"init": str(run_dir), "data": "digits", "model_args": {"patch_size": 4}}
    config = resolve_config(preset="demo", overrides=overrides)
    with logged(caplog, r"fixes the architecture; ignoring model_args \{'patch_size': 4\}"):
        model = build_model(config, num_classes=10, in_chans=1)
    assert model.config.patch_size == TINY["patch_size"]


def test_importing_the_training_library_leaves_matplotlib_alone():
    script = "import sys, vitkit.train; print('matplotlib.pyplot' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_a_vit_from_scratch_on_little_data_is_told_what_helps(tmp_path, capsys):
    from vitkit.train.advice import small_data_advice

    summary = train(digits_config(tmp_path, epochs=1), progress=True)
    shown = capsys.readouterr().out
    assert "is little for a ViT trained from scratch" in shown and "--model resnetv2_small_bit" in shown
    model = vitkit.load_model(summary.run_dir).model
    assert small_data_advice(model, train_images=50_000, starts_from_weights=False) is None
    assert small_data_advice(model, train_images=500, starts_from_weights=True) is None
    resnet = vitkit.create_model("BiT-Tiny", num_classes=10)
    hybrid = vitkit.create_model("Ti/16", num_classes=10, img_size=32, hybrid_layers=[1], patch_size=2)
    for network in (resnet, hybrid):  # CNN biases already: told what else helps
        shown = small_data_advice(network, train_images=500, starts_from_weights=False)
        assert "from scratch. What else helps: a pre-trained start" in shown and "lacks" not in shown
    assert small_data_advice(hybrid, train_images=500, starts_from_weights=True) is None
