"""Training settings: layers, and values that would silently make another run than asked."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import vitkit
from conftest import digits_config
from vitkit.cli.main import main
from vitkit.train import PRESETS, resolve_config, train
from vitkit.train.config import ConfigError
from vitkit.train.loop import resume_run


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"epochs": -1}, "--epochs must be positive"),
        ({"steps": -3}, "--steps must be at least 1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"batch_size": -4}, "--batch-size must be at least 1"),
        ({"accum_steps": 0}, "--accum-steps must be at least 1"),
        ({"crop_scale": [2.0, 1.0]}, "--crop-scale is two area fractions"),
        ({"randaugment": 100}, "--randaugment is a magnitude from 0 to 30"),
        ({"label_smoothing": 2.0}, "--label-smoothing is in [0, 1)"),
        ({"lr": "fast"}, "lr must be float, got 'fast'"),
        ({"model_args": {"patch_size": "abc"}}, "patch_size must be int, got 'abc'"),
        ({"model_args": {"bogus": 1}}, "unknown ViTConfig field(s) bogus"),
        ({"model_args": {"num_classes": 5}}, "set by the data"),
        ({"model_args": {"in_chans": 3}}, "set by --in-chans"),
        ({"model_args": {"dropout": 0.1}}, "set by --dropout"),
        ({"model_args": {"norm_eps": -1}}, "norm_eps must be > 0"),
        ({"model": "X/99"}, "unknown model 'X/99'"),
    ],
)
def test_values_that_cannot_be_right_are_refused_where_they_enter(overrides, words):
    with pytest.raises(ConfigError) as caught:
        resolve_config(overrides=overrides)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("optimizer", "adm", "--optimizer 'adm' is not a choice; did you mean 'adam'?"),
        ("schedule", "step", "--schedule 'step' is not a choice"),
        ("precision", "fp16", "--precision 'fp16' is not a choice"),
        ("attention", "flash", "--attention 'flash' is not a choice"),
        ("device", "tpu", "--device 'tpu' is not a choice"),
    ],
)
def test_a_bad_choice_fails_alike_from_a_flag_a_file_and_python_before_data_loads(
    tmp_path, capsys, setting, value, words
):
    # "data" names a folder that does not exist: reaching the data would give another error
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(ConfigError, match=words):
        resolve_config(overrides={setting: value, "data": missing})
    (tmp_path / "run.toml").write_text(f'{setting} = "{value}"\ndata = "{missing}"\n')
    flag = "--" + setting.replace("_", "-")
    for argv in (["--config", str(tmp_path / "run.toml")], [flag, value, "--data", missing]):
        assert main(["train", *argv, "--out", str(tmp_path / "run")]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_settings_that_do_not_go_together_are_refused_before_anything_loads():
    with pytest.raises(ConfigError, match="--ema is not supported with --fsdp"):
        resolve_config(overrides={"ema": 0.999, "fsdp": True})
    with pytest.raises(ConfigError, match="--evaluators fewshot is not supported with --fsdp"):
        resolve_config(overrides={"evaluators": ["heldout", "fewshot:5"], "fsdp": True})


def test_presets_are_the_files_that_ship():
    assert "demo" in PRESETS and "mae-paper" in PRESETS
    for name in PRESETS:
        assert resolve_config(preset=name).preset == name


def test_a_config_file_with_wrong_types_or_bad_yaml_gets_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("lr: [oops\n")
    (tmp_path / "typed.yaml").write_text("epochs: many\n")
    for name, words in (("bad.yaml", "is not valid"), ("typed.yaml", "epochs must be float")):
        assert main(["train", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


def test_the_model_config_refuses_impossible_shapes():
    with pytest.raises(ValueError, match="norm_eps must be > 0"):
        vitkit.ViTConfig(norm_eps=-1.0)
    with pytest.raises(ValueError, match="img_size must be a positive"):
        vitkit.ViTConfig(img_size=-16)


def test_a_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_config(overrides={"data": "images"}).data == str(tmp_path / "images")
    assert resolve_config(overrides={"data": "digits"}).data == "digits"


def _folder(root, classes, per_class=3):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_data_that_would_make_a_wrong_classifier_is_refused(tmp_path):
    one = _folder(tmp_path / "one", ["cat"])
    with pytest.raises(ConfigError, match=r"one class \('cat'\): a classifier needs two"):
        train(digits_config(tmp_path, data=str(one), out=str(tmp_path / "r1")), progress=False)
    empty = _folder(tmp_path / "empty", ["cat", "dog"])
    (empty / "fish").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*fish holds no readable image"):
        train(digits_config(tmp_path, data=str(empty), out=str(tmp_path / "r2")), progress=False)
    _folder(tmp_path / "csv", ["cat"])
    (tmp_path / "labels.csv").write_text("path,label\ncsv/cat/0.png,cat\ncsv/cat/1.png,\n")
    with pytest.raises(ValueError, match="line 3: the label is empty"):
        train(digits_config(tmp_path, data=str(tmp_path / "labels.csv"), out=str(tmp_path / "r3")), progress=False)


def test_resume_may_lengthen_a_run_and_refuses_other_changes(tmp_path, capsys):
    config = digits_config(tmp_path, epochs=1)
    train(config, progress=False)
    assert main(["train", "--resume", config.out, "--lr", "0.5", "--quiet"]) == 2
    assert "--lr cannot change mid-run" in capsys.readouterr().err
    summary = resume_run(config.out, changes={"epochs": 2.0}, progress=False)
    assert summary.epochs == pytest.approx(2.0)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["epochs"] == 2.0
    assert main(["train", "--resume", config.out, "--config", os.devnull]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_a_preset_shapes_its_own_model_not_the_one_named_instead():
    assert resolve_config(preset="demo", overrides={"model": "BiT-Small"}).model_args == {}
    assert resolve_config(preset="demo", overrides={"model": "S/16"}).model_args == {}
    # naming the preset's own model asks for that model, not the preset's variant of it
    assert resolve_config(preset="demo", overrides={"model": "Ti/16"}).model_args == {}
    kept = resolve_config(preset="demo", overrides={"model_args": {"depth": 2}}).model_args
    assert kept["depth"] == 2 and kept["patch_size"] == 7  # the preset's model, reshaped key by key
    with pytest.raises(ConfigError, match="unknown ResNetV2Config field"):
        resolve_config(preset="demo", overrides={"model": "BiT-Small", "model_args": {"patch_size": 7}})


def test_starting_from_weights_defaults_to_the_finetuning_recipe():
    config = resolve_config(overrides={"init": "vit_small_patch16_224.augreg_in21k", "data": "digits"})
    assert (config.preset, config.optimizer, config.lr, config.crop_scale) == ("finetune", "adamw", 2e-3, [0.5, 1.0])
    assert config.rotate == 0 and config.label_smoothing == 0  # none of the digit-style demo recipe
    assert config.flip is False  # unknown content: flips are the user's call (--flip)
    assert config.model_args == {}  # the weights fix the architecture
    named = resolve_config(preset="paper-finetune", overrides={"init": "vit_small_patch16_224.augreg_in21k"})
    assert (named.preset, named.optimizer) == ("paper-finetune", "sgd")  # a preset named is the preset used
    assert resolve_config(overrides={"data": "digits"}).preset == "demo"


def test_image_files_trained_from_scratch_default_to_the_hybrid_recipe(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "labels.csv").write_text("path,label\nimages/cat/1.png,cat\n")
    for data in ("images", "labels.csv"):
        config = resolve_config(overrides={"data": str(tmp_path / data)})
        assert (config.preset, config.img_size, config.min_steps, config.flip) == ("hybrid-demo", 32, 1000, False)
        assert config.model_args["hybrid_layers"] == [1] and config.rotate == 0 and config.zoom is None
    assert resolve_config(overrides={"data": "mnist"}).preset == "demo"  # built-in sets keep the main job's
    weights = resolve_config(overrides={"data": str(tmp_path / "images"), "init": "vit_small_patch16_224.augreg_in21k"})
    assert weights.preset == "finetune" and weights.min_steps is None


def test_the_main_jobs_model_says_which_of_the_papers_variants_it_is():
    config = vitkit.get_config("Ti/16", **resolve_config(preset="demo").model_args, img_size=28)
    assert config.describe() == (
        "6 blocks × 128 wide (4 heads, MLP 256), 7×7 px patches: 16 tokens at 28 px, "
        "relative positions, average pooling"
    )
    paper = vitkit.get_config("Ti/16", img_size=28, patch_size=7)
    assert paper.describe().endswith("16 tokens + class token at 28 px")  # the default goes without saying
